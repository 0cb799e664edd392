//! `--call check,format=json`: the lint report as buildx v0.36.1 prints it. buildx's source
//! entries also carry the LLB definition that loaded the Dockerfile (with the session's random
//! id in it); kiln has no LLB in BuildKit's protobuf form, so that one field is left out.

use serde::Serialize;

use crate::lint::{Report, Warning};
use crate::outline::{base64, go_json};

#[derive(Serialize)]
struct Json<'a> {
    /// `null` when there are none, as buildx prints it.
    warnings: Option<Vec<JsonWarning<'a>>>,
    sources: Vec<JsonSource<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonWarning<'a> {
    rule_name: &'a str,
    description: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    url: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<JsonLocation>,
}

#[derive(Serialize)]
struct JsonLocation {
    ranges: Vec<JsonRange>,
}

#[derive(Serialize)]
struct JsonRange {
    start: JsonLine,
    end: JsonLine,
}

#[derive(Serialize)]
struct JsonLine {
    line: usize,
}

#[derive(Serialize)]
struct JsonSource<'a> {
    filename: &'a str,
    data: String,
    language: &'static str,
}

impl Report {
    /// The report as `docker buildx build --call check,format=json` prints it.
    pub fn to_json(&self, name: &str, source: &str) -> String {
        fn warning(w: &Warning) -> JsonWarning<'_> {
            JsonWarning {
                rule_name: w.rule,
                description: w.description,
                url: &w.url,
                detail: &w.message,
                location: w.location.map(|l| JsonLocation {
                    ranges: vec![JsonRange {
                        start: JsonLine { line: l.start_line },
                        end: JsonLine {
                            line: l.end_line.max(l.start_line),
                        },
                    }],
                }),
            }
        }
        go_json(&Json {
            warnings: (!self.warnings.is_empty())
                .then(|| self.warnings.iter().map(warning).collect()),
            sources: vec![JsonSource {
                filename: name,
                data: base64(source),
                language: "Dockerfile",
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::LintOptions;

    /// What buildx v0.36.1 printed for this Dockerfile under the oracle, less the LLB
    /// definition of the source.
    #[test]
    fn as_buildx_prints_it() {
        let source = "FROM busybox\nARG X\nFROM busybox AS a\nMAINTAINER me\nENV A=$Y\n";
        let df = kiln_dockerfile::parse(source).unwrap();
        let opts = LintOptions {
            all_stages: true,
            ..LintOptions::default()
        };
        let report = crate::lint(&df, source, &opts).unwrap();
        let expected = r#"{
  "warnings": [
    {
      "ruleName": "MaintainerDeprecated",
      "description": "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
      "url": "https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/",
      "detail": "Maintainer instruction is deprecated in favor of using label",
      "location": {
        "ranges": [
          {
            "start": {
              "line": 4
            },
            "end": {
              "line": 4
            }
          }
        ]
      }
    },
    {
      "ruleName": "UndefinedVar",
      "description": "Variables should be defined before their use",
      "url": "https://docs.docker.com/go/dockerfile/rule/undefined-var/",
      "detail": "Usage of undefined variable '$Y'",
      "location": {
        "ranges": [
          {
            "start": {
              "line": 5
            },
            "end": {
              "line": 5
            }
          }
        ]
      }
    }
  ],
  "sources": [
    {
      "filename": "Dockerfile",
      "data": "RlJPTSBidXN5Ym94CkFSRyBYCkZST00gYnVzeWJveCBBUyBhCk1BSU5UQUlORVIgbWUKRU5WIEE9JFkK",
      "language": "Dockerfile"
    }
  ]
}
"#;
        assert_eq!(report.to_json("Dockerfile", source), expected);
        let clean = "FROM busybox AS base\nRUN echo hi\n";
        let df = kiln_dockerfile::parse(clean).unwrap();
        let report = crate::lint(&df, clean, &opts).unwrap();
        assert!(
            report
                .to_json("Dockerfile", clean)
                .starts_with("{\n  \"warnings\": null,\n  \"sources\": [")
        );
    }
}
