//! A training run's folder, and the protocol that lets a killed run resume exactly:
//!
//! ```text
//! OUT/model.safetensors             the latest model (official format); a state-tuning run
//!                                   writes state.safetensors and time_state.pth instead, a
//!                                   LoRA run adapter.safetensors
//! OUT/metrics.csv                   step,loss,lr,valid_loss,tokens_per_s
//! OUT/loss.png                      the loss curve
//! OUT/checkpoints/step-00000100/    the outputs above, optimizer.bpk, trainer.json
//! OUT/checkpoints/latest            the name of the newest complete checkpoint
//! ```
//!
//! A checkpoint folder is complete before `latest` names it (each file is written atomically,
//! then `latest` is replaced atomically), so a run killed at any moment leaves `latest`
//! naming a complete checkpoint; older checkpoints are pruned only after that. A resumed run
//! must have the same settings (its fingerprint, written into `trainer.json`), keeps the
//! metrics up to its checkpoint and recomputes the rest.

use crate::trainer::{StepReport, Trainer};
use rwkv_burn::safetensors_io::{IoError, write_atomic};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What can go wrong with a run folder.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The operating system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing a file failed.
    #[error(transparent)]
    Write(#[from] IoError),
    /// Reading or writing a state failed.
    #[error(transparent)]
    State(#[from] rwkv_burn::StateError),
    /// Writing a run's output failed.
    #[error("{0}")]
    Output(String),
    /// `--resume` on a folder without a checkpoint.
    #[error("no checkpoint to resume in {0} (nothing was saved yet, or another folder)")]
    NoCheckpoint(PathBuf),
    /// A checkpoint's `trainer.json` is damaged.
    #[error("{path}: invalid trainer.json ({detail})")]
    BadMeta {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Resuming with other settings than the interrupted run's.
    #[error("--resume needs the same settings as the interrupted run ({saved})")]
    Settings {
        /// The interrupted run's fingerprint.
        saved: String,
    },
}

/// Where a resumed run continues from: its latest checkpoint.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The checkpoint folder.
    pub dir: PathBuf,
    /// Optimizer steps done.
    pub step: usize,
    /// The window sampler's position.
    pub sampler_state: u64,
    /// The optimizer's saved state.
    pub optimizer: Vec<u8>,
}

impl Resume {
    /// The model saved in the checkpoint.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(MODEL)
    }

    /// An output file of the checkpoint, by name (e.g. [`STATE`]).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// One line of `metrics.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    /// 1-based step.
    pub step: usize,
    /// Training loss of the step.
    pub loss: f32,
    /// Learning rate of the step.
    pub lr: f64,
    /// Validation loss, at validation steps.
    pub valid_loss: Option<f32>,
    /// Training throughput so far.
    pub tokens_per_s: f64,
}

/// The columns of `metrics.csv`, in order.
pub const METRICS_HEADER: &str = "step,loss,lr,valid_loss,tokens_per_s";

impl MetricsRow {
    /// The row of a step's report.
    pub fn new(report: &StepReport, tokens_per_s: f64) -> Self {
        Self {
            step: report.step,
            loss: report.loss,
            lr: report.lr,
            valid_loss: report.valid_loss,
            tokens_per_s,
        }
    }

    /// Parses a line; `None` for anything that is not a row (the header, a torn last line).
    pub fn parse(line: &str) -> Option<Self> {
        let mut cols = line.split(',');
        let step = cols.next()?.parse().ok()?;
        let loss = cols.next()?.parse().ok()?;
        let lr = cols.next()?.parse().ok()?;
        let valid = cols.next()?;
        let valid_loss = match valid {
            "" => None,
            v => Some(v.parse().ok()?),
        };
        let tokens_per_s = cols.next()?.parse().ok()?;
        Some(Self {
            step,
            loss,
            lr,
            valid_loss,
            tokens_per_s,
        })
    }

    /// The line as written to `metrics.csv`.
    pub fn line(&self) -> String {
        format!(
            "{},{},{},{},{:.1}",
            self.step,
            self.loss,
            self.lr,
            self.valid_loss.map_or(String::new(), |v| v.to_string()),
            self.tokens_per_s
        )
    }
}

/// Every row of a metrics file's text.
pub fn parse_metrics(text: &str) -> Vec<MetricsRow> {
    text.lines().filter_map(MetricsRow::parse).collect()
}

/// (step, loss) points of a curve.
pub type Curve = Vec<(usize, f32)>;

/// The training and validation curves of metrics rows.
pub fn curves(rows: &[MetricsRow]) -> (Curve, Curve) {
    let train = rows.iter().map(|r| (r.step, r.loss)).collect();
    let valid = rows
        .iter()
        .filter_map(|r| Some((r.step, r.valid_loss?)))
        .collect();
    (train, valid)
}

/// The model a full training run writes (official format).
pub const MODEL: &str = "model.safetensors";
/// The state a state-tuning run writes, under the official state names (`rwkv --state-in`).
pub const STATE: &str = "state.safetensors";
/// The LoRA adapters a LoRA run writes (`rwkv --lora`, `rwkv-train merge`).
pub const ADAPTER: &str = "adapter.safetensors";
/// The same state in RWKV-PEFT's layout (`blocks.{i}.att.time_state`), as RWKV-PEFT saves it.
pub const TIME_STATE: &str = "time_state.pth";
const OPTIMIZER: &str = "optimizer.bpk";
const META: &str = "trainer.json";
const LATEST: &str = "latest";

/// A training run's output folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run in folder `root` (nothing is created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// A checkpoint to load: a run folder stands for the model of its latest checkpoint,
    /// anything else for itself.
    pub fn resolve_model(path: &Path) -> Result<PathBuf, RunError> {
        let run = Self::new(path);
        Ok(match run.latest_name()? {
            Some(name) => run.checkpoints().join(name).join(MODEL),
            None => path.to_path_buf(),
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The latest model, in the official format.
    pub fn model_path(&self) -> PathBuf {
        self.root.join(MODEL)
    }

    /// The metrics file.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }

    /// The loss curve.
    pub fn curve_path(&self) -> PathBuf {
        self.root.join("loss.png")
    }

    fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
        move |source| RunError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The name `checkpoints/latest` holds, if the run saved any.
    fn latest_name(&self) -> Result<Option<String>, RunError> {
        let latest = self.checkpoints().join(LATEST);
        if !latest.is_file() {
            return Ok(None);
        }
        let name = std::fs::read_to_string(&latest).map_err(Self::io(&latest))?;
        Ok(Some(name.trim().to_string()))
    }

    /// The latest complete checkpoint, checked against the settings of the run that resumes
    /// it.
    pub fn resume(&self, fingerprint: &str) -> Result<Resume, RunError> {
        let name = self
            .latest_name()?
            .ok_or_else(|| RunError::NoCheckpoint(self.checkpoints()))?;
        let dir = self.checkpoints().join(name);
        let meta_path = dir.join(META);
        let bytes = std::fs::read(&meta_path).map_err(Self::io(&meta_path))?;
        let bad = |detail: &str| RunError::BadMeta {
            path: meta_path.clone(),
            detail: detail.to_string(),
        };
        let meta: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))?;
        if meta["fingerprint"].as_str() != Some(fingerprint) {
            return Err(RunError::Settings {
                saved: meta["fingerprint"].to_string(),
            });
        }
        let step = meta["step"].as_u64().ok_or_else(|| bad("no step"))?;
        let step = usize::try_from(step).map_err(|_| bad("step out of range"))?;
        let sampler_state = meta["sampler_state"]
            .as_u64()
            .ok_or_else(|| bad("no sampler_state"))?;
        let optimizer_path = dir.join(OPTIMIZER);
        let optimizer = std::fs::read(&optimizer_path).map_err(Self::io(&optimizer_path))?;
        Ok(Resume {
            dir,
            step,
            sampler_state,
            optimizer,
        })
    }

    /// Starts `metrics.csv`: a fresh one, or for a resumed run the rows up to its checkpoint
    /// (later ones are recomputed). Returns the writer and the rows kept.
    pub fn start_metrics(
        &self,
        resume: Option<&Resume>,
    ) -> Result<(MetricsWriter, Vec<MetricsRow>), RunError> {
        std::fs::create_dir_all(&self.root).map_err(Self::io(&self.root))?;
        let path = self.metrics_path();
        let kept: Vec<MetricsRow> = match resume {
            Some(resume) => parse_metrics(&std::fs::read_to_string(&path).unwrap_or_default())
                .into_iter()
                .filter(|row| row.step <= resume.step)
                .collect(),
            None => Vec::new(),
        };
        let mut file = std::fs::File::create(&path).map_err(Self::io(&path))?;
        let mut text = format!("{METRICS_HEADER}\n");
        for row in &kept {
            text.push_str(&row.line());
            text.push('\n');
        }
        file.write_all(text.as_bytes()).map_err(Self::io(&path))?;
        Ok((MetricsWriter { file, path }, kept))
    }

    /// Writes a checkpoint of the run at `trainer.step`: `outputs` writes the run's outputs
    /// into the folder it is given and names them; then `latest` points at the checkpoint,
    /// the outputs are copied to the top of the run folder, and all but the newest `keep`
    /// checkpoints (at least the new one) are removed.
    pub fn save_checkpoint(
        &self,
        outputs: &mut dyn FnMut(&Path) -> Result<Vec<&'static str>, RunError>,
        trainer: &Trainer,
        fingerprint: &str,
        keep: usize,
    ) -> Result<(), RunError> {
        let root = self.checkpoints();
        let name = format!("step-{:08}", trainer.step);
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).map_err(Self::io(&dir))?;
        let files = outputs(&dir)?;
        write_atomic(&dir.join(OPTIMIZER), &trainer.optimizer_bytes())?;
        let meta = serde_json::json!({
            "step": trainer.step,
            "sampler_state": trainer.sampler_state(),
            "fingerprint": fingerprint,
        });
        write_atomic(&dir.join(META), meta.to_string().as_bytes())?;
        write_atomic(&root.join(LATEST), name.as_bytes())?;
        // The latest outputs also sit at the top of the output folder.
        for file in files {
            let from = dir.join(file);
            let bytes = std::fs::read(&from).map_err(Self::io(&from))?;
            write_atomic(&self.root.join(file), &bytes)?;
        }
        let mut older: Vec<String> = std::fs::read_dir(&root)
            .map_err(Self::io(&root))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("step-") && *n != name)
            .collect();
        older.sort();
        let excess = older.len().saturating_sub(keep.saturating_sub(1));
        for old in &older[..excess] {
            let _ = std::fs::remove_dir_all(root.join(old));
        }
        Ok(())
    }
}

/// Appends rows to `metrics.csv`.
pub struct MetricsWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Appends one row.
    pub fn write(&mut self, row: &MetricsRow) -> Result<(), RunError> {
        writeln!(self.file, "{}", row.line()).map_err(RunDir::io(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_rows_round_trip_and_skip_what_is_not_a_row() {
        let rows = vec![
            MetricsRow {
                step: 1,
                loss: 5.5,
                lr: 3e-4,
                valid_loss: None,
                tokens_per_s: 1234.5,
            },
            MetricsRow {
                step: 2,
                loss: 5.25,
                lr: 2.5e-4,
                valid_loss: Some(5.125),
                tokens_per_s: 1300.0,
            },
        ];
        let mut text = format!("{METRICS_HEADER}\n");
        for row in &rows {
            text.push_str(&row.line());
            text.push('\n');
        }
        text.push_str("3,5.0,2e-4"); // a line torn by a kill
        assert_eq!(parse_metrics(&text), rows);
        let (train, valid) = curves(&rows);
        assert_eq!(train, vec![(1, 5.5), (2, 5.25)]);
        assert_eq!(valid, vec![(2, 5.125)]);
    }

    #[test]
    fn resuming_needs_a_checkpoint_and_the_same_settings() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        assert!(matches!(run.resume("a"), Err(RunError::NoCheckpoint(_))));
        let step = run.checkpoints().join("step-00000003");
        std::fs::create_dir_all(&step).unwrap();
        let meta = serde_json::json!({"step": 3, "sampler_state": 9, "fingerprint": "a"});
        std::fs::write(step.join(META), meta.to_string()).unwrap();
        std::fs::write(step.join(OPTIMIZER), b"opt").unwrap();
        std::fs::write(run.checkpoints().join(LATEST), "step-00000003").unwrap();
        let resume = run.resume("a").unwrap();
        assert_eq!(
            (
                resume.step,
                resume.sampler_state,
                resume.optimizer.as_slice()
            ),
            (3, 9, &b"opt"[..])
        );
        assert_eq!(resume.model_path(), step.join(MODEL));
        assert_eq!(RunDir::resolve_model(run.root()).unwrap(), step.join(MODEL));
        assert!(matches!(run.resume("b"), Err(RunError::Settings { .. })));
        std::fs::write(step.join(META), "{").unwrap();
        assert!(matches!(run.resume("a"), Err(RunError::BadMeta { .. })));
    }

    #[test]
    fn resumed_metrics_keep_the_rows_up_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let (mut writer, kept) = run.start_metrics(None).unwrap();
        assert!(kept.is_empty());
        for step in 1..=4 {
            let row = MetricsRow {
                step,
                loss: step as f32,
                lr: 1e-3,
                valid_loss: (step == 2).then_some(0.5),
                tokens_per_s: 10.0,
            };
            writer.write(&row).unwrap();
        }
        drop(writer);
        let resume = Resume {
            dir: PathBuf::new(),
            step: 2,
            sampler_state: 0,
            optimizer: Vec::new(),
        };
        let (_, kept) = run.start_metrics(Some(&resume)).unwrap();
        assert_eq!(kept.iter().map(|r| r.step).collect::<Vec<_>>(), [1, 2]);
        let text = std::fs::read_to_string(run.metrics_path()).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.starts_with(METRICS_HEADER));
    }
}
