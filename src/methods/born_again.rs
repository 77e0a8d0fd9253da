//! Born-again networks — Furlanello, Lipton, Tschannen, Itti & Anandkumar (2018), "Born Again
//! Neural Networks", ICML: a model of the same architecture is distilled from the previous
//! generation, repeatedly; later generations often beat their teacher.
//!
//! `[[model]] name = "s" … born_again = { generations = 2 }` adds `s-gen2` (taught by `s`) and
//! `s-gen3` (taught by `s-gen2`).

use crate::stages::model::{DistillConfig, ModelConfig, Role};

/// Expands every entry with `born_again` into its generations.
pub fn expand(models: &[ModelConfig]) -> Vec<ModelConfig> {
    let mut out = Vec::new();
    for m in models {
        let mut first = m.clone();
        first.born_again = None;
        out.push(first);
        if let Some(b) = &m.born_again {
            let mut prev = m.name.clone();
            for g in 0..b.generations {
                let name = format!("{}-gen{}", m.name, g + 2);
                out.push(ModelConfig {
                    name: name.clone(),
                    role: Some(Role::Student),
                    arch: m.arch.clone(),
                    train: m.train.clone(),
                    distill: Some(DistillConfig {
                        teacher: prev.clone(),
                        temperature: crate::stages::tune::Tunable::Fixed(b.temperature),
                        alpha: crate::stages::tune::Tunable::Fixed(b.alpha),
                        assistants: Vec::new(),
                        hint: None,
                        loss: crate::losses::SoftLoss::Kd,
                        init_from_teacher: false,
                        synthetic: None,
                        transfer: None,
                        anneal: false,
                    }),
                    from: None,
                    born_again: None,
                    tasks: Vec::new(),
                });
                prev = name;
            }
        }
    }
    out
}
