//! The report's plots: one method per kind of plot, over the run's metrics ([`draw`] picks it
//! by the plot's file name).

use super::{plot, slug, Metrics};
use crate::data::Task;
use crate::error::{Error, Result};
use crate::store::ModelMetrics;
use plot::{Axes, Line, Look, Mark, Point, Scale};

/// Draws one plot of `plot_list`.
pub(super) fn draw(m: &Metrics, file: &str, tolerances: &[(String, f64)]) -> Result<String> {
    let p = Plots {
        m,
        cls: m.task == Task::Classification,
    };
    if file.ends_with("_vs_size.svg") {
        return p.against_size();
    }
    if file.ends_with("_vs_latency.svg") {
        return p.against_latency();
    }
    if file == "val_accuracy.svg" || file == "val_mse.svg" {
        return p.validation_curves();
    }
    if file == "val_agreement.svg" {
        return p.agreement();
    }
    if file == "disagreement.svg" {
        return p.disagreement(tolerances);
    }
    if let Some(name) = file
        .strip_prefix("rounds-")
        .and_then(|f| f.strip_suffix(".svg"))
    {
        return p.rounds(name, file);
    }
    if file == "compression.svg" {
        return p.compression();
    }
    if let Some(name) = file
        .strip_prefix("curves-")
        .and_then(|f| f.strip_suffix(".svg"))
    {
        return p.curves(name, file);
    }
    Err(Error::Other(format!("unknown plot {file}")))
}

/// The metrics a plot is drawn from, and whether they are a classifier's.
struct Plots<'a> {
    m: &'a Metrics,
    cls: bool,
}

impl Plots<'_> {
    /// A model's colour and marker: by its place among the run's models.
    fn look_of(&self, name: &str) -> Look {
        plot::look(
            self.m
                .models
                .iter()
                .position(|x| x.name == name)
                .unwrap_or(0),
        )
    }

    /// A model's test score: accuracy in %, or MSE.
    fn score(&self, x: &ModelMetrics) -> Option<f64> {
        if self.cls {
            x.accuracy.map(|a| 100.0 * a)
        } else {
            x.mse
        }
    }

    fn score_label(&self) -> &'static str {
        if self.cls {
            "test accuracy (%)"
        } else {
            "test MSE (target units², lower is better)"
        }
    }

    fn val_label(&self) -> &'static str {
        if self.cls {
            "validation accuracy (%)"
        } else {
            "validation MSE (standardised target)"
        }
    }

    /// Every model's test score against `xv` of it (models without a score, or at x ≤ 0, left
    /// out).
    fn points(&self, xv: &dyn Fn(&ModelMetrics) -> f64) -> Vec<Point> {
        self.m
            .models
            .iter()
            .filter_map(|x| {
                self.score(x).map(|y| Point {
                    name: x.name.clone(),
                    look: self.look_of(&x.name),
                    x: xv(x),
                    y,
                })
            })
            .filter(|p| p.x > 0.0)
            .collect()
    }

    /// Test score against the weights' size.
    fn against_size(&self) -> Result<String> {
        plot::tradeoff(
            &Axes {
                title: &format!(
                    "Test {} against size",
                    if self.cls { "accuracy" } else { "MSE" }
                ),
                x_label: "size of the weights (bytes, log scale)",
                y_label: self.score_label(),
                x: Scale::LogBytes,
                y: Scale::Linear,
            },
            &self.points(&|x| x.bytes as f64),
            self.cls,
        )
    }

    /// Test score against batch-1 latency.
    fn against_latency(&self) -> Result<String> {
        plot::tradeoff(
            &Axes {
                title: &format!(
                    "Test {} against batch-1 latency",
                    if self.cls { "accuracy" } else { "MSE" }
                ),
                x_label: "latency at batch 1 (log scale)",
                y_label: self.score_label(),
                x: Scale::LogMicros,
                y: Scale::Linear,
            },
            &self.points(&|x| x.latency_us_b1),
            self.cls,
        )
    }

    /// Each model's validation score per epoch.
    fn validation_curves(&self) -> Result<String> {
        let series: Vec<Line> = self
            .m
            .models
            .iter()
            .filter_map(|x| {
                let c = &x.training.as_ref()?.curves;
                let v = if self.cls {
                    &c.val_accuracy
                } else {
                    &c.val_mse
                };
                Some(Line {
                    name: x.name.clone(),
                    look: self.look_of(&x.name),
                    points: c
                        .epoch
                        .iter()
                        .zip(v)
                        .map(|(&e, &a)| (e as f64, if self.cls { 100.0 * a } else { a }))
                        .collect(),
                    dashed: false,
                    bold: false,
                })
            })
            .collect();
        plot::lines(
            &Axes {
                title: &format!(
                    "Validation {} per epoch",
                    if self.cls { "accuracy" } else { "MSE" }
                ),
                x_label: "epoch",
                y_label: self.val_label(),
                x: Scale::Integer,
                y: if self.cls { Scale::Linear } else { Scale::Log },
            },
            &series,
            &[],
        )
    }

    /// Each distilled model's agreement with its teacher (and accuracy) per epoch.
    fn agreement(&self) -> Result<String> {
        let mut series: Vec<Line> = Vec::new();
        for x in &self.m.models {
            let Some(c) = x.training.as_ref().map(|t| &t.curves) else {
                continue;
            };
            if c.val_agreement.is_empty() {
                continue;
            }
            for (v, dashed, what) in [
                (&c.val_agreement, false, "agreement"),
                (&c.val_accuracy, true, "accuracy"),
            ] {
                series.push(Line {
                    name: format!("{} ({what})", x.name),
                    look: self.look_of(&x.name),
                    points: c
                        .epoch
                        .iter()
                        .zip(v)
                        .map(|(&e, &a)| (e as f64, 100.0 * a))
                        .collect(),
                    dashed,
                    bold: false,
                });
            }
        }
        plot::lines(
            &Axes {
                title: "Agreement with the teacher and accuracy, validation, per epoch",
                x_label: "epoch",
                y_label: "%",
                x: Scale::Integer,
                y: Scale::Linear,
            },
            &series,
            &[],
        )
    }

    /// Each sub-model group's disagreement per round, its tolerance and the round kept.
    fn disagreement(&self, tolerances: &[(String, f64)]) -> Result<String> {
        let mut series = Vec::new();
        let mut marks = Vec::new();
        for (gi, g) in self.m.submodel_groups.iter().enumerate() {
            let look = plot::look(self.m.models.len() + gi);
            series.push(Line {
                name: format!("{} (K = {})", g.name, g.k),
                look,
                points: g
                    .rounds
                    .iter()
                    .map(|r| (r.round as f64, r.disagreement.max(1e-12)))
                    .collect(),
                dashed: false,
                bold: false,
            });
            if let Some((_, t)) = tolerances.iter().find(|(n, _)| n == &g.name) {
                marks.push(Mark::Level {
                    name: format!("{}: tolerance {t:e}", g.name),
                    y: *t,
                    look,
                });
            }
            marks.push(Mark::At {
                name: format!("{}: round {} kept", g.name, g.chosen_round),
                x: g.chosen_round as f64,
                look: Look {
                    colour: plotters::style::RGBColor(150, 150, 150),
                    ..look
                },
            });
        }
        plot::lines(
            &Axes {
                title: "Disagreement between sub-models per round",
                x_label: "transfer round (0 = after phase 1)",
                y_label: "disagreement on validation (log scale)",
                x: Scale::Integer,
                y: Scale::Log,
            },
            &series,
            &marks,
        )
    }

    /// One group's members and ensemble per round (`name`: the group's slug).
    fn rounds(&self, name: &str, file: &str) -> Result<String> {
        let g = self
            .m
            .submodel_groups
            .iter()
            .find(|g| slug(&g.name) == name)
            .ok_or_else(|| Error::Other(format!("no group for {file}")))?;
        let mut series: Vec<Line> = (0..g.k)
            .map(|i| {
                let member = format!("{}-{}", g.name, i + 1);
                Line {
                    name: member.clone(),
                    look: self.look_of(&member),
                    points: g
                        .rounds
                        .iter()
                        .filter_map(|r| {
                            let v = if self.cls {
                                r.val_accuracy.get(i).map(|a| 100.0 * a)
                            } else {
                                r.val_loss.get(i).copied()
                            };
                            v.map(|v| (r.round as f64, v))
                        })
                        .collect(),
                    dashed: false,
                    bold: false,
                }
            })
            .collect();
        let ens = format!("{}-ensemble", g.name);
        series.push(Line {
            name: ens.clone(),
            look: self.look_of(&ens),
            points: g
                .rounds
                .iter()
                .map(|r| {
                    (
                        r.round as f64,
                        if self.cls {
                            100.0 * r.ensemble_val_accuracy.unwrap_or(f64::NAN)
                        } else {
                            r.ensemble_val_loss
                        },
                    )
                })
                .collect(),
            dashed: false,
            bold: true,
        });
        let marks = [Mark::At {
            name: format!("round {} kept", g.chosen_round),
            x: g.chosen_round as f64,
            look: Look {
                colour: plotters::style::RGBColor(150, 150, 150),
                marker: plot::Marker::Circle,
            },
        }];
        plot::lines(
            &Axes {
                title: &format!(
                    "Group {}: each sub-model and the ensemble per round",
                    g.name
                ),
                x_label: "transfer round (0 = after phase 1)",
                y_label: if self.cls {
                    "validation accuracy (%)"
                } else {
                    "validation loss (standardised MSE)"
                },
                x: Scale::Integer,
                y: Scale::Linear,
            },
            &series,
            &marks,
        )
    }

    /// Compression stages: the test score before and after recovery.
    fn compression(&self) -> Result<String> {
        let rows: Vec<(String, Look, f64, f64)> = self
            .m
            .models
            .iter()
            .filter_map(|x| {
                let b = x.compression.as_ref()?.before.as_ref()?;
                let before = if self.cls {
                    b.accuracy.map(|a| 100.0 * a)
                } else {
                    b.mse
                }?;
                Some((
                    x.name.clone(),
                    self.look_of(&x.name),
                    before,
                    self.score(x)?,
                ))
            })
            .collect();
        plot::before_after(
            &Axes {
                title: "Compression: test score before and after recovery",
                x_label: self.score_label(),
                y_label: "stage (see legend)",
                x: Scale::Linear,
                y: Scale::Integer,
            },
            &rows,
        )
    }

    /// One model's training and validation loss per epoch (`name`: the model's slug).
    fn curves(&self, name: &str, file: &str) -> Result<String> {
        let x = self
            .m
            .models
            .iter()
            .find(|x| slug(&x.name) == name)
            .ok_or_else(|| Error::Other(format!("no model for {file}")))?;
        let c = &x
            .training
            .as_ref()
            .ok_or_else(|| Error::Other(format!("{} has no curves", x.name)))?
            .curves;
        let look = self.look_of(&x.name);
        let ep: Vec<f64> = c.epoch.iter().map(|&e| e as f64).collect();
        let other = Look {
            colour: plotters::style::RGBColor(120, 120, 120),
            marker: plot::Marker::Ring,
        };
        let series = vec![
            Line {
                name: "training loss".into(),
                look,
                points: ep
                    .iter()
                    .copied()
                    .zip(c.train_loss.iter().copied())
                    .collect(),
                dashed: false,
                bold: false,
            },
            Line {
                name: "validation loss".into(),
                look: other,
                points: ep.iter().copied().zip(c.val_loss.iter().copied()).collect(),
                dashed: true,
                bold: false,
            },
        ];
        let marks: Vec<Mark> = x
            .training
            .as_ref()
            .map(|t| t.best_epoch)
            .filter(|&b| b > 0)
            .map(|b| Mark::At {
                name: format!("best epoch ({b}), kept"),
                x: b as f64,
                look: other,
            })
            .into_iter()
            .collect();
        plot::lines(
            &Axes {
                title: &format!("{}: loss per epoch", x.name),
                x_label: "epoch",
                y_label: "loss (log scale)",
                x: Scale::Integer,
                y: Scale::Log,
            },
            &series,
            &marks,
        )
    }
}
