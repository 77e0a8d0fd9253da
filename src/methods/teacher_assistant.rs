//! Teacher-assistant knowledge distillation — Mirzadeh, Farajtabar, Li, Levine, Matsukawa &
//! Ghasemzadeh (2020), "Improved Knowledge Distillation via Teacher Assistant", AAAI: when the
//! gap between teacher and student is large, distil through intermediate-size assistants
//! (teacher → assistant → … → student), each step with the student's distillation settings.
//!
//! `distill = { teacher = "t", assistants = [{ kind = "mlp", hidden = [256] }] }` on model `s`
//! adds `s-ta1` (taught by `t`) and makes `s` learn from `s-ta1`.

use crate::stages::model::{ModelConfig, Role};

/// Expands every student with `distill.assistants` into the chain.
pub fn expand(models: &[ModelConfig]) -> Vec<ModelConfig> {
    let mut out = Vec::new();
    for m in models {
        let Some(ds) = m.distill.as_ref().filter(|d| !d.assistants.is_empty()) else {
            out.push(m.clone());
            continue;
        };
        let mut teacher = ds.teacher.clone();
        for (i, arch) in ds.assistants.iter().enumerate() {
            let name = format!("{}-ta{}", m.name, i + 1);
            let mut d = ds.clone();
            d.teacher = teacher.clone();
            d.assistants = Vec::new();
            d.hint = None;
            out.push(ModelConfig {
                name: name.clone(),
                role: Some(Role::Assistant),
                arch: Some(arch.clone()),
                train: m.train.clone(),
                distill: Some(d),
                from: None,
                born_again: None,
                tasks: Vec::new(),
            });
            teacher = name;
        }
        let mut student = m.clone();
        if let Some(d) = student.distill.as_mut() {
            d.teacher = teacher;
            d.assistants = Vec::new();
        }
        out.push(student);
    }
    out
}
