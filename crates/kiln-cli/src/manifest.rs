//! `kiln manifest`: a thin shell over the engine's local manifest lists.

use std::process::ExitCode;

use anyhow::{Result, bail};
use kiln_engine::PlatformAnnotation;

use crate::args::{Cli, ManifestArgs, ManifestCommand};
use crate::images::say;
use crate::{open_engine, parse_ref};

pub async fn run(cli: &Cli, a: &ManifestArgs) -> Result<ExitCode> {
    let engine = open_engine(cli)?;
    match &a.command {
        ManifestCommand::Create {
            amend,
            insecure,
            list,
            manifests,
        } => {
            let list = parse_ref(list)?;
            let sources = manifests
                .iter()
                .map(|m| parse_ref(m))
                .collect::<Result<Vec<_>>>()?;
            if *insecure {
                engine
                    .manifest_allow_insecure(&sources.iter().collect::<Vec<_>>())
                    .await;
            }
            engine.manifest_create(&list, &sources, *amend).await?;
            say(format_args!("Created manifest list {}", list.whole()))?;
        }
        ManifestCommand::Annotate {
            os,
            arch,
            variant,
            os_version,
            os_features,
            list,
            manifest,
        } => {
            let annotation = PlatformAnnotation {
                os: os.clone(),
                arch: arch.clone(),
                variant: variant.clone(),
                os_version: os_version.clone(),
                os_features: os_features.clone(),
            };
            engine
                .manifest_annotate(&parse_ref(list)?, &parse_ref(manifest)?, &annotation)
                .await?;
        }
        ManifestCommand::Inspect {
            insecure,
            verbose,
            names,
        } => {
            let (list, manifest) = match names.as_slice() {
                [m] => (None, parse_ref(m)?),
                [l, m] => (Some(parse_ref(l)?), parse_ref(m)?),
                _ => bail!("manifest inspect takes [LIST] MANIFEST"),
            };
            if *insecure {
                engine.manifest_allow_insecure(&[&manifest]).await;
            }
            let found = engine
                .manifest_inspect(list.as_ref(), &manifest, *verbose)
                .await?;
            say(format_args!("{}", found.text()))?;
        }
        ManifestCommand::Push {
            insecure,
            purge,
            list,
        } => {
            let list = parse_ref(list)?;
            if *insecure {
                engine.manifest_allow_insecure(&[&list]).await;
            }
            let digest = engine.manifest_push(&list, *purge).await?;
            say(format_args!("{digest}"))?;
        }
        ManifestCommand::Rm { lists } => {
            let mut failed = false;
            for l in lists {
                if let Err(e) = engine.manifest_rm(&parse_ref(l)?) {
                    eprintln!("error: {e}");
                    failed = true;
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
