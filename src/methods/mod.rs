//! Distillation schemes that are sequences of models, expressed by expanding the experiment's
//! `[[model]]` list before it runs, so that each generated model is trained, checkpointed,
//! resumed and reported like any other.

pub mod born_again;
pub mod teacher_assistant;

use crate::stages::model::ModelConfig;

/// The `[[model]]` list with born-again generations and teacher-assistant chains written out as
/// plain entries.
pub fn expand(models: &[ModelConfig]) -> Vec<ModelConfig> {
    born_again::expand(&teacher_assistant::expand(models))
}

#[cfg(test)]
mod tests {
    #[test]
    fn chains_and_generations_are_written_out() {
        let cfg = crate::config::load_str(
            r#"
[data]
format = "digits"
[[model]]
name = "t"
arch = { kind = "mlp", hidden = [64] }
[[model]]
name = "s"
arch = { kind = "mlp", hidden = [8] }
distill = { teacher = "t", temperature = 3.0, alpha = 0.5, assistants = [{ kind = "mlp", hidden = [32] }, { kind = "mlp", hidden = [16] }] }
born_again = { generations = 2 }
"#,
            "t.toml",
            &[],
        )
        .unwrap();
        let e = cfg.validate().unwrap();
        let names: Vec<&str> = e.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["t", "s-ta1", "s-ta2", "s", "s-gen2", "s-gen3"]);
        let teacher_of = |n: &str| {
            e.models
                .iter()
                .find(|m| m.name == n)
                .unwrap()
                .distill
                .as_ref()
                .unwrap()
                .teacher
                .clone()
        };
        assert_eq!(teacher_of("s-ta1"), "t");
        assert_eq!(teacher_of("s-ta2"), "s-ta1");
        assert_eq!(teacher_of("s"), "s-ta2");
        assert_eq!(teacher_of("s-gen2"), "s");
        assert_eq!(teacher_of("s-gen3"), "s-gen2");
        assert_eq!(e.models[1].arch.as_ref().unwrap().hidden(), vec![32]);
        assert_eq!(e.models[1].role(), crate::config::Role::Assistant);
        // the born-again generations repeat the student's architecture and use BAN's defaults
        let g2 = &e.models[4];
        assert_eq!(g2.arch.as_ref().unwrap().hidden(), vec![8]);
        assert_eq!(
            g2.distill.as_ref().unwrap().alpha,
            crate::stages::tune::Tunable::Fixed(1.0)
        );
    }
}
