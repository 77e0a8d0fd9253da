//! Dense linear algebra on small matrices, in f64: PCA through a cyclic Jacobi
//! eigendecomposition of the covariance (the Model2Vec initialisation of a static-embedding
//! student reduces its teacher's token embeddings with it).

/// The mean of the rows of `x` (`cols` each) and the `k` leading principal directions
/// (unit vectors, row-major `k × cols`), by a Jacobi eigendecomposition of the covariance.
pub fn pca(x: &[f32], cols: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / cols.max(1);
    let mut mean = vec![0f64; cols];
    for row in x.chunks_exact(cols) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let mut cov = vec![0f64; cols * cols];
    let mut c = vec![0f64; cols];
    for row in x.chunks_exact(cols) {
        for (ci, (&v, &m)) in c.iter_mut().zip(row.iter().zip(&mean)) {
            *ci = v as f64 - m;
        }
        for i in 0..cols {
            let ci = c[i];
            for j in i..cols {
                cov[i * cols + j] += ci * c[j];
            }
        }
    }
    for i in 0..cols {
        for j in 0..i {
            cov[i * cols + j] = cov[j * cols + i];
        }
    }
    let (vals, vecs) = jacobi_eigen(cov, cols);
    let mut order: Vec<usize> = (0..cols).collect();
    order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
    let mut comps = Vec::with_capacity(k * cols);
    for &o in order.iter().take(k) {
        // Column `o` of the eigenvector matrix, with a fixed sign (largest entry positive).
        let v: Vec<f64> = (0..cols).map(|r| vecs[r * cols + o]).collect();
        let big = v
            .iter()
            .copied()
            .fold(0f64, |a, b| if b.abs() > a.abs() { b } else { a });
        let s = if big < 0.0 { -1.0 } else { 1.0 };
        comps.extend(v.iter().map(|x| x * s));
    }
    (mean, comps)
}

/// Eigenvalues and eigenvectors (columns of the returned row-major matrix) of a symmetric
/// `n × n` matrix, by cyclic Jacobi rotations.
pub fn jacobi_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        let total: f64 = a.iter().map(|x| x * x).sum();
        if off <= 1e-22 * total.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let cs = 1.0 / (t * t + 1.0).sqrt();
                let sn = t * cs;
                for k in 0..n {
                    let akp = a[k * n + p];
                    let akq = a[k * n + q];
                    a[k * n + p] = cs * akp - sn * akq;
                    a[k * n + q] = sn * akp + cs * akq;
                }
                for k in 0..n {
                    let apk = a[p * n + k];
                    let aqk = a[q * n + k];
                    a[p * n + k] = cs * apk - sn * aqk;
                    a[q * n + k] = sn * apk + cs * aqk;
                }
                for k in 0..n {
                    let vkp = v[k * n + p];
                    let vkq = v[k * n + q];
                    v[k * n + p] = cs * vkp - sn * vkq;
                    v[k * n + q] = sn * vkp + cs * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_leading_direction() {
        // Points along (3, 4)/5 with small noise across it.
        let mut x = Vec::new();
        for i in 0..=200 {
            let t = (i as f32 - 100.0) / 10.0;
            let e = if i % 2 == 0 { 0.05 } else { -0.05 };
            x.extend([
                3.0 * t / 5.0 - 4.0 * e / 5.0 + 1.0,
                4.0 * t / 5.0 + 3.0 * e / 5.0,
            ]);
        }
        let (mean, comps) = pca(&x, 2, 1);
        assert!(
            (mean[0] - 1.0).abs() < 1e-3 && mean[1].abs() < 1e-3,
            "{mean:?}"
        );
        assert!(
            (comps[0] - 0.6).abs() < 1e-3 && (comps[1] - 0.8).abs() < 1e-3,
            "{comps:?}"
        );
    }

    #[test]
    fn jacobi_diagonalises() {
        let a = vec![4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 2.0, 0.5, 5.0];
        let (vals, vecs) = jacobi_eigen(a.clone(), 3);
        for k in 0..3 {
            for i in 0..3 {
                let av: f64 = (0..3).map(|j| a[i * 3 + j] * vecs[j * 3 + k]).sum();
                assert!((av - vals[k] * vecs[i * 3 + k]).abs() < 1e-9);
            }
        }
        assert!((vals.iter().sum::<f64>() - 12.0).abs() < 1e-9);
    }
}
