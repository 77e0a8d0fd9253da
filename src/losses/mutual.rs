//! Knowledge transfer between peers.
//!
//! Deep mutual learning — Zhang, Xiang, Hospedales & Lu (2018), "Deep Mutual Learning", CVPR:
//! each network minimises its label loss plus the KL divergence from the peers' predictions to
//! its own. With K > 2 peers the target is the average of the peers' softened outputs.
//!
//! Codistillation — Anil, Pereyra, Passos, Ormándi, Dahl & Hinton (2018), "Large scale
//! distributed neural network training through online distillation", ICLR: the same loss, with
//! the peers' predictions taken from a possibly stale copy of their weights (here: their state
//! at the end of the previous transfer round), which is what lets peers live on other machines.
//!
//! `L_k = T² · KL(p̄_{−k} ‖ softmax(z_k / T))`, `p̄_{−k} = mean_{j≠k} softmax(z_j / T)`.
//! For regression, `L_k = MSE(f_k, mean_{j≠k} f_j)`.

pub use crate::kernels::softmax::softmax_rows;

/// Average of the peers' softened outputs: `mean_j softmax(z_j / T)`, row-major.
pub fn peer_average(peers: &[&[f32]], classes: usize, temperature: f32) -> Vec<f32> {
    let n = peers.first().map(|p| p.len()).unwrap_or(0);
    let mut avg = vec![0f32; n];
    for p in peers {
        for (a, v) in avg.iter_mut().zip(softmax_rows(p, classes, temperature)) {
            *a += v;
        }
    }
    let k = peers.len().max(1) as f32;
    avg.iter_mut().for_each(|a| *a /= k);
    avg
}

/// Logits whose softmax at temperature `T` is exactly `p`: `T · ln p`. Lets an averaged
/// distribution act as a teacher in the distillation loss.
pub fn probs_as_logits(p: &[f32], temperature: f32) -> Vec<f32> {
    p.iter().map(|&v| temperature * v.max(1e-30).ln()).collect()
}

/// Plain average of regression outputs.
pub fn mean_outputs(peers: &[&[f32]]) -> Vec<f32> {
    let n = peers.first().map(|p| p.len()).unwrap_or(0);
    let mut avg = vec![0f32; n];
    for p in peers {
        for (a, v) in avg.iter_mut().zip(p.iter()) {
            *a += v;
        }
    }
    let k = peers.len().max(1) as f32;
    avg.iter_mut().for_each(|a| *a /= k);
    avg
}

/// Disagreement of K models on the same samples: the mean over models and samples of
/// `KL(softmax(z_k/T) ‖ p̄_{−k})` (classification, `classes > 1`), or the mean squared
/// difference between each output and the peers' average (regression, `classes == 1`).
pub fn disagreement(
    outputs: &[Vec<f32>],
    classes: usize,
    temperature: f32,
    regression: bool,
) -> f64 {
    let k = outputs.len();
    if k < 2 {
        return 0.0;
    }
    let n = outputs[0].len() / classes.max(1);
    let mut total = 0f64;
    for i in 0..k {
        let peers: Vec<&[f32]> = (0..k)
            .filter(|&j| j != i)
            .map(|j| outputs[j].as_slice())
            .collect();
        if regression {
            let avg = mean_outputs(&peers);
            total += outputs[i]
                .iter()
                .zip(&avg)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / n.max(1) as f64;
        } else {
            let p = softmax_rows(&outputs[i], classes, temperature);
            let q = peer_average(&peers, classes, temperature);
            let mut kl = 0f64;
            for (&pi, &qi) in p.iter().zip(&q) {
                if pi > 0.0 {
                    kl += pi as f64 * ((pi as f64).ln() - (qi.max(1e-30) as f64).ln());
                }
            }
            total += kl / n.max(1) as f64;
        }
    }
    total / k as f64
}
