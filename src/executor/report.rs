//! Step reports (`output = …`): the step's records as CSV or JSON lines at
//! `<state.dir>/reports/<job id>/<step>.csv|jsonl`.
//!
//! A report is written to `<step>.<ext>.partial` while the step runs and renamed when its
//! stage ends well, so a reader never mistakes a half-written file for a report; a stage
//! that fails deletes it. CSV columns are the `columns` the runbook lists, in that order;
//! without a list they are the union of the records' properties in first-seen order
//! (properties of one record in name order), which needs every record first: the records go
//! to a spool file in the job's temporary folder and the CSV is written from it at the end.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::fs::File;
use tokio::io::{AsyncWriteExt, BufWriter};

use crate::history::JobId;
use crate::runbook::{OutputFormat, OutputSpec};

use super::spool::{FileError, JsonLinesWriter, file_error, read_json_lines};

/// Where the report of `step` in job `id` is written.
pub fn report_path(state_dir: &Path, id: &JobId, step: &str, format: OutputFormat) -> PathBuf {
    state_dir
        .join("reports")
        .join(id.as_str())
        .join(format!("{step}.{}", format.extension()))
}

/// One CSV cell: strings as they are, numbers and booleans as PowerShell prints them
/// (`True`), `null` empty, a list of plain values joined with `"; "`, anything nested as
/// compact JSON.
pub(crate) fn csv_cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(true) => "True".to_string(),
        Value::Bool(false) => "False".to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|v| !v.is_array() && !v.is_object()) => {
            items.iter().map(csv_cell).collect::<Vec<_>>().join("; ")
        }
        other => other.to_string(),
    }
}

/// The record's properties (a record that is not an object is one property `Value`).
fn properties(record: &Value) -> Map<String, Value> {
    match record {
        Value::Object(map) => map.clone(),
        other => {
            let mut map = Map::new();
            map.insert("Value".to_string(), other.clone());
            map
        }
    }
}

fn property<'a>(record: &'a Value, name: &str) -> &'a Value {
    match record {
        Value::Object(map) => map.get(name).unwrap_or(&Value::Null),
        other if name == "Value" => other,
        _ => &Value::Null,
    }
}

/// Renders one CSV row.
fn csv_row(cells: impl IntoIterator<Item = String>, path: &Path) -> Result<Vec<u8>, FileError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let cells: Vec<String> = cells.into_iter().collect();
    writer.write_record(&cells).map_err(|e| FileError {
        action: "write",
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    writer.into_inner().map_err(|e| FileError {
        action: "write",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

enum Kind {
    JsonLines(JsonLinesWriter),
    Csv {
        out: BufWriter<File>,
        columns: Vec<String>,
    },
    /// CSV without a column list: records wait in a spool file until the columns are known.
    CsvUnion {
        spool: JsonLinesWriter,
        keys: Vec<String>,
        seen: HashSet<String>,
    },
}

/// A report being written.
pub(crate) struct ReportWriter {
    pub(crate) step: String,
    pub(crate) format: OutputFormat,
    columns: Vec<String>,
    path: PathBuf,
    partial: PathBuf,
    kind: Kind,
    records: u64,
}

impl ReportWriter {
    /// Starts the report of `step`; `tmp_dir` is the job's temporary folder.
    pub(crate) async fn create(
        state_dir: &Path,
        tmp_dir: &Path,
        id: &JobId,
        step: &str,
        spec: &OutputSpec,
    ) -> Result<Self, FileError> {
        let path = report_path(state_dir, id, step, spec.format);
        let mut partial = path.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let columns = spec.columns.clone();
        let kind = match spec.format {
            OutputFormat::Jsonl => Kind::JsonLines(JsonLinesWriter::create(&partial).await?),
            OutputFormat::Csv if columns.is_empty() => Kind::CsvUnion {
                spool: JsonLinesWriter::create(&tmp_dir.join(format!("report-{step}.jsonl")))
                    .await?,
                keys: Vec::new(),
                seen: HashSet::new(),
            },
            OutputFormat::Csv => {
                let mut out = create_file(&partial).await?;
                let header = csv_row(columns.iter().cloned(), &partial)?;
                out.write_all(&header)
                    .await
                    .map_err(file_error("write", &partial))?;
                Kind::Csv {
                    out,
                    columns: columns.clone(),
                }
            }
        };
        Ok(Self {
            step: step.to_string(),
            format: spec.format,
            columns,
            path,
            partial,
            kind,
            records: 0,
        })
    }

    pub(crate) async fn write(&mut self, record: &Value) -> Result<(), FileError> {
        self.records += 1;
        match &mut self.kind {
            Kind::JsonLines(writer) if self.columns.is_empty() => writer.write(record).await,
            Kind::JsonLines(writer) => {
                let projected: Map<String, Value> = self
                    .columns
                    .iter()
                    .map(|c| (c.clone(), property(record, c).clone()))
                    .collect();
                writer.write(&Value::Object(projected)).await
            }
            Kind::Csv { out, columns } => {
                let row = csv_row(
                    columns.iter().map(|c| csv_cell(property(record, c))),
                    &self.partial,
                )?;
                out.write_all(&row)
                    .await
                    .map_err(file_error("write", &self.partial))
            }
            Kind::CsvUnion { spool, keys, seen } => {
                for key in properties(record).keys() {
                    if seen.insert(key.clone()) {
                        keys.push(key.clone());
                    }
                }
                spool.write(record).await
            }
        }
    }

    /// Completes the report; returns where it is and how many records it holds.
    pub(crate) async fn finish(self) -> Result<(PathBuf, u64), FileError> {
        match self.kind {
            Kind::JsonLines(writer) => {
                writer.finish().await?;
            }
            Kind::Csv { mut out, .. } => {
                out.flush()
                    .await
                    .map_err(file_error("write", &self.partial))?;
            }
            Kind::CsvUnion { spool, keys, .. } => {
                let (spooled, _) = spool.finish().await?;
                let mut out = create_file(&self.partial).await?;
                let header = csv_row(keys.iter().cloned(), &self.partial)?;
                out.write_all(&header)
                    .await
                    .map_err(file_error("write", &self.partial))?;
                let mut records = Box::pin(read_json_lines(&spooled).await?);
                while let Some(record) = records.next().await {
                    let record = record?;
                    let row = csv_row(
                        keys.iter().map(|k| csv_cell(property(&record, k))),
                        &self.partial,
                    )?;
                    out.write_all(&row)
                        .await
                        .map_err(file_error("write", &self.partial))?;
                }
                out.flush()
                    .await
                    .map_err(file_error("write", &self.partial))?;
                let _ = tokio::fs::remove_file(&spooled).await;
            }
        }
        tokio::fs::rename(&self.partial, &self.path)
            .await
            .map_err(file_error("complete", &self.path))?;
        Ok((self.path, self.records))
    }

    /// Drops an unfinished report (its stage failed).
    pub(crate) async fn discard(self) {
        drop(self.kind);
        let _ = tokio::fs::remove_file(&self.partial).await;
    }
}

async fn create_file(path: &Path) -> Result<BufWriter<File>, FileError> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(file_error("create the folder of", path))?;
    }
    let file = File::create(path)
        .await
        .map_err(file_error("create", path))?;
    Ok(BufWriter::new(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_cells_read_like_powershell_exports() {
        let cases = [
            (json!(null), ""),
            (json!(true), "True"),
            (json!(false), "False"),
            (json!(42), "42"),
            (json!(1.5), "1.5"),
            (
                json!("1.2 GB (1,288,490,189 bytes)"),
                "1.2 GB (1,288,490,189 bytes)",
            ),
            (
                json!(["SMTP:a@contoso.com", "smtp:a@x"]),
                "SMTP:a@contoso.com; smtp:a@x",
            ),
            (json!([]), ""),
            (json!([{"a": 1}]), r#"[{"a":1}]"#),
            (json!({"Add": "x"}), r#"{"Add":"x"}"#),
        ];
        for (value, expected) in cases {
            assert_eq!(csv_cell(&value), expected, "{value}");
        }
    }

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("rw-report-{}", uuid::Uuid::new_v4()))
    }

    async fn write_report(spec: OutputSpec, records: &[Value]) -> (String, u64, PathBuf) {
        let dir = temp_dir();
        let id: JobId = "01JQ3Z8W6V3N9R2K5T7X4B1M0C".parse().unwrap();
        let mut writer = ReportWriter::create(&dir, &dir.join("tmp"), &id, "usage", &spec)
            .await
            .unwrap();
        for r in records {
            writer.write(r).await.unwrap();
        }
        let (path, count) = writer.finish().await.unwrap();
        assert_eq!(path, report_path(&dir, &id, "usage", spec.format));
        let text = tokio::fs::read_to_string(&path).await.unwrap();
        (text, count, dir)
    }

    #[tokio::test]
    async fn csv_without_columns_has_the_union_of_properties_in_first_seen_order() {
        let records = [
            json!({"Name": "a", "Size": 1}),
            json!({"Name": "b, c", "Extra": true}),
            json!({"Size": 3, "Alias": "d"}),
        ];
        let spec = OutputSpec {
            format: OutputFormat::Csv,
            columns: Vec::new(),
        };
        let (text, count, dir) = write_report(spec, &records).await;
        assert_eq!(count, 3);
        assert_eq!(
            text,
            "Name,Size,Extra,Alias\na,1,,\n\"b, c\",,True,\n,3,,d\n"
        );
        assert!(!dir.join("tmp").join("report-usage.jsonl").exists());
        tokio::fs::remove_dir_all(&dir).await.unwrap();
    }

    #[tokio::test]
    async fn listed_columns_come_in_their_order_in_csv_and_json_lines() {
        let records = [json!({"A": 1, "B": "x", "C": 0}), json!({"B": "y"})];
        let columns = vec!["B".to_string(), "A".to_string()];
        let (csv, _, dir) = write_report(
            OutputSpec {
                format: OutputFormat::Csv,
                columns: columns.clone(),
            },
            &records,
        )
        .await;
        assert_eq!(csv, "B,A\nx,1\ny,\n");
        tokio::fs::remove_dir_all(&dir).await.unwrap();
        let (jsonl, _, dir) = write_report(
            OutputSpec {
                format: OutputFormat::Jsonl,
                columns,
            },
            &records,
        )
        .await;
        let lines: Vec<Value> = jsonl
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [json!({"A": 1, "B": "x"}), json!({"A": null, "B": "y"})]
        );
        tokio::fs::remove_dir_all(&dir).await.unwrap();
    }

    #[tokio::test]
    async fn a_discarded_report_leaves_no_file() {
        let dir = temp_dir();
        let id: JobId = "01JQ3Z8W6V3N9R2K5T7X4B1M0C".parse().unwrap();
        let spec = OutputSpec {
            format: OutputFormat::Jsonl,
            columns: Vec::new(),
        };
        let mut writer = ReportWriter::create(&dir, &dir, &id, "s", &spec)
            .await
            .unwrap();
        writer.write(&json!({"a": 1})).await.unwrap();
        writer.discard().await;
        let folder = report_path(&dir, &id, "s", OutputFormat::Jsonl);
        let entries = std::fs::read_dir(folder.parent().unwrap()).unwrap().count();
        assert_eq!(entries, 0);
        tokio::fs::remove_dir_all(&dir).await.unwrap();
    }
}
