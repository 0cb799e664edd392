//! The differential corpus (tests/oracle, docs/oracle.md): every case with a recording is built
//! with kiln and compared, in canonical JSON, with what BuildKit v0.32.2 built from it. BuildKit
//! is not needed here; `cargo xtask oracle record` made the recordings.

use kiln_test::oracle::{self, Bases, Outcome};

use crate::support::*;

#[test]
fn oracle_corpus_matches_buildkit() {
    let Some(k) = Kiln::new("oracle_corpus_matches_buildkit") else {
        return;
    };
    let bases = match Bases::from_registry(&k.registry) {
        Ok(b) => b,
        Err(e) => {
            skip_because(
                &k.test,
                &format!(
                    "the corpus' bases are not in the registry (scripts/setup.sh seeds them): {e:#}"
                ),
            );
            return;
        }
    };
    let cases = oracle::load_cases(&oracle::corpus_dir(), &[]).expect("loading the corpus");
    let (mut compared, mut matched, mut xfailed) = (0, 0, 0);
    let mut failures = Vec::new();
    for case in &cases {
        let recording = case.recording().expect("reading a recording");
        let Some(recording) = recording else {
            eprintln!("{}: no recording yet", case.name);
            continue;
        };
        compared += 1;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", case.name))
            .tempdir_in(k.dir())
            .unwrap();
        let ws = case.materialize(dir.path()).expect("writing the case");
        let out = dir.path().join("image.tar");
        let mut cmd = k.command(&["build", "--progress", "plain"]);
        cmd.args(case.kiln_flags(&ws, &out)).arg(&ws.context);
        match case.source_date_epoch() {
            Some(e) => cmd.env("SOURCE_DATE_EPOCH", e),
            None => cmd.env_remove("SOURCE_DATE_EPOCH"),
        };
        let run = k.run(cmd);
        let outcome = if run.code == Some(0) {
            match oracle::canonicalize(&out, &bases) {
                Ok(v) => Outcome::Image(v),
                Err(e) => Outcome::Failed(format!("error: reading kiln's image: {e:#}")),
            }
        } else {
            Outcome::Failed(run.stderr.clone())
        };
        let judgement = oracle::judge(case, &recording, &outcome);
        if judgement.matches() {
            matched += 1;
        } else if judgement.xfail.is_some() {
            xfailed += 1;
        }
        if let Some(why) = judgement.failure() {
            failures.push(why);
        }
    }
    eprintln!(
        "oracle corpus: {compared} case(s) compared, {matched} match, {xfailed} differ as marked (xfail)"
    );
    assert!(
        failures.is_empty(),
        "{} of {compared} corpus case(s) fail (details: `cargo xtask oracle check CASE`):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
