use super::*;

fn run(source: &str, opts: &LintOptions) -> Report {
    let dockerfile = kiln_dockerfile::parse(source).expect("parses");
    lint(&dockerfile, source, opts).expect("valid check options")
}

fn fired(source: &str, opts: &LintOptions) -> Vec<&'static str> {
    run(source, opts).warnings.iter().map(|w| w.rule).collect()
}

fn all() -> LintOptions<'static> {
    LintOptions {
        all_stages: true,
        ..LintOptions::default()
    }
}

/// Each rule: a Dockerfile that triggers it (and only it, among the rules listed), and a
/// close variant that does not.
const CASES: &[(&str, &str, &str)] = &[
    (
        "StageNameCasing",
        "FROM busybox AS Build\n",
        "FROM busybox AS build\n",
    ),
    (
        "FromAsCasing",
        "FROM busybox as build\n",
        "FROM busybox AS build\n",
    ),
    (
        "NoEmptyContinuation",
        "FROM busybox\nRUN a \\\n\n  b\n",
        "FROM busybox\nRUN a \\\n  b\n",
    ),
    (
        "ConsistentInstructionCasing",
        "FROM busybox\nRUN a\nrun b\n",
        "from busybox\nrun a\nrun b\n",
    ),
    (
        "DuplicateStageName",
        "FROM busybox AS a\nFROM busybox AS a\n",
        "FROM busybox AS a\nFROM busybox AS b\n",
    ),
    (
        "ReservedStageName",
        "FROM busybox AS context\n",
        "FROM busybox AS ctx\n",
    ),
    (
        "JSONArgsRecommended",
        "FROM busybox\nCMD run me\n",
        "FROM busybox\nSHELL [\"/bin/ash\", \"-c\"]\nCMD run me\n",
    ),
    (
        "MaintainerDeprecated",
        "FROM busybox\nMAINTAINER me\n",
        "FROM busybox\nLABEL org.opencontainers.image.authors=me\n",
    ),
    (
        "UndefinedArgInFrom",
        "FROM busybox:$TAG\n",
        "ARG TAG\nFROM busybox:$TAG\n",
    ),
    (
        "WorkdirRelativePath",
        "FROM busybox\nWORKDIR app\n",
        "FROM busybox\nWORKDIR /app\nWORKDIR sub\n",
    ),
    (
        "UndefinedVar",
        "FROM busybox\nCOPY $SRC /x\n",
        "FROM busybox\nARG SRC\nCOPY $SRC /x\n",
    ),
    (
        "MultipleInstructionsDisallowed",
        "FROM busybox\nCMD [\"a\"]\nCMD [\"b\"]\n",
        "FROM busybox AS a\nCMD [\"a\"]\nFROM a\nCMD [\"b\"]\n",
    ),
    (
        "LegacyKeyValueFormat",
        "FROM busybox\nLABEL k v\n",
        "FROM busybox\nLABEL k=v\n",
    ),
    (
        "RedundantTargetPlatform",
        "FROM --platform=$TARGETPLATFORM busybox\n",
        "FROM --platform=$BUILDPLATFORM busybox\n",
    ),
    (
        "SecretsUsedInArgOrEnv",
        "FROM busybox\nARG NPM_TOKEN\n",
        "FROM busybox\nARG NPM_TOKEN_FILE\n",
    ),
    (
        "InvalidDefaultArgInFrom",
        "ARG V\nFROM busybox:$V\n",
        "ARG V=1\nFROM busybox:$V\n",
    ),
    (
        "FromPlatformFlagConstDisallowed",
        "FROM --platform=linux/arm64 busybox AS build\n",
        "FROM --platform=linux/arm64 busybox AS build-arm64\n",
    ),
    (
        "InvalidDefinitionDescription",
        "# check=experimental=InvalidDefinitionDescription\n# the version\nARG V=1\nFROM busybox\n",
        "# check=experimental=InvalidDefinitionDescription\n# V the version\nARG V=1\nFROM busybox\n",
    ),
    (
        "ExposeProtoCasing",
        "FROM busybox\nEXPOSE 80/TCP\n",
        "FROM busybox\nEXPOSE 80/tcp\n",
    ),
    (
        "ExposeInvalidFormat",
        "FROM busybox\nEXPOSE 8080:80\n",
        "FROM busybox\nEXPOSE 80\n",
    ),
];

#[test]
fn each_rule_fires_on_its_case_and_not_on_the_fix() {
    for (rule, bad, good) in CASES {
        let got = fired(bad, &all());
        assert!(got.contains(rule), "{rule} on {bad:?}: got {got:?}");
        let got = fired(good, &all());
        assert!(!got.contains(rule), "{rule} on {good:?}: got {got:?}");
    }
}

#[test]
fn every_rule_has_a_case_or_a_test() {
    for rule in ALL {
        let covered = CASES.iter().any(|(r, _, _)| *r == rule.name)
            || matches!(rule.name, "CopyIgnoredFile" | "InvalidBaseImagePlatform");
        assert!(covered, "{} has no test", rule.name);
    }
}

#[test]
fn copy_ignored_file() {
    let matcher = kiln_ignore::Matcher::from_dockerignore("secret.txt\n").unwrap();
    let opts = LintOptions {
        ignore: Some(&matcher),
        ..all()
    };
    let src =
        "FROM busybox\nCOPY secret.txt /a\nCOPY other.txt /b\nCOPY --from=busybox secret.txt /c\n";
    let report = run(src, &opts);
    let lines: Vec<(&str, usize)> = report
        .warnings
        .iter()
        .map(|w| (w.rule, w.location.unwrap().start_line))
        .collect();
    assert_eq!(lines, [("CopyIgnoredFile", 2)]);
    assert_eq!(
        report.warnings[0].message,
        "Attempting to Copy file \"secret.txt\" that is excluded by .dockerignore"
    );
    // Exceptions make the answer uncertain: no warning at all.
    let matcher = kiln_ignore::Matcher::from_dockerignore("secret*\n!secret.md\n").unwrap();
    let opts = LintOptions {
        ignore: Some(&matcher),
        ..all()
    };
    assert!(fired(src, &opts).is_empty());
}

#[test]
fn invalid_base_image_platform_needs_the_resolved_config() {
    let src = "FROM busybox\n";
    assert!(fired(src, &all()).is_empty());
    let config = ImageConfig {
        os: "linux".into(),
        architecture: "arm64".into(),
        ..Default::default()
    };
    let platform = Platform::new("linux", "amd64", None);
    let images = BTreeMap::from([(("busybox".to_string(), platform.clone()), config)]);
    let opts = LintOptions {
        images: Some(&images),
        platform: Some(&platform),
        ..all()
    };
    let report = run(src, &opts);
    assert_eq!(report.warnings.len(), 1);
    assert_eq!(
        report.warnings[0].message,
        "Base image busybox was pulled with platform \"linux/arm64\", expected \"linux/amd64\" for current build"
    );
    assert!(report.warnings[0].url.is_empty());
}

#[test]
fn base_image_env_defines_variables() {
    let src = "FROM golang\nENV PATH=$GOPATH/bin:$PATH\n";
    assert_eq!(fired(src, &all()), ["UndefinedVar"]);
    let mut config = ImageConfig::default();
    config.config.env = Some(vec!["GOPATH=/go".into()]);
    let images = BTreeMap::from([(("golang".to_string(), Platform::host()), config)]);
    let opts = LintOptions {
        images: Some(&images),
        ..all()
    };
    assert!(fired(src, &opts).is_empty());
}

#[test]
fn skip_directive_and_comments() {
    let src = "# check=skip=StageNameCasing,FromAsCasing\nFROM busybox as Build\nMAINTAINER x\n";
    assert_eq!(fired(src, &all()), ["MaintainerDeprecated"]);
    let src = "# check=skip=all\nFROM busybox as Build\nMAINTAINER x\n";
    assert!(fired(src, &all()).is_empty());
    // A comment above one instruction affects only that instruction.
    let src = "FROM busybox\n# check=skip=MaintainerDeprecated\nMAINTAINER x\nMAINTAINER y\n";
    let report = run(src, &all());
    assert_eq!(report.warnings.len(), 1);
    assert_eq!(report.warnings[0].location.unwrap().start_line, 4);
    // The build arg replaces the directive.
    let args = BTreeMap::from([(
        "BUILDKIT_DOCKERFILE_CHECK".to_string(),
        "skip=MaintainerDeprecated".to_string(),
    )]);
    let opts = LintOptions {
        build_args: Some(&args),
        ..all()
    };
    let src = "# check=skip=all\nFROM busybox as Build\nMAINTAINER x\n";
    assert_eq!(fired(src, &opts), ["StageNameCasing", "FromAsCasing"]);
}

#[test]
fn error_directive_turns_warnings_into_a_violation() {
    let report = run("# check=error=true\nFROM busybox as b\n", &all());
    assert!(report.error_on_warning);
    assert_eq!(
        report.violation().as_deref(),
        Some("lint violation found for rules: FromAsCasing")
    );
    let report = run("# check=error=true\nFROM busybox AS b\n", &all());
    assert_eq!(report.violation(), None);
    let report = run("FROM busybox as b\n", &all());
    assert_eq!(report.violation(), None);
}

#[test]
fn bad_check_options_fail() {
    let src = "# check=skip=all;colour=blue\nFROM busybox\n";
    let dockerfile = kiln_dockerfile::parse(src).unwrap();
    let err = lint(&dockerfile, src, &all()).unwrap_err().to_string();
    assert!(err.contains("invalid check option \"colour\""), "{err}");
    let src = "# check=error=maybe\nFROM busybox\n";
    let dockerfile = kiln_dockerfile::parse(src).unwrap();
    assert!(lint(&dockerfile, src, &all()).is_err());
}

#[test]
fn a_build_checks_only_the_stages_it_needs() {
    let src = "FROM busybox AS unused\nLABEL k v\n\nFROM busybox AS used\nLABEL k=v\n";
    assert_eq!(fired(src, &all()), ["LegacyKeyValueFormat"]);
    assert!(fired(src, &LintOptions::default()).is_empty());
    let opts = LintOptions {
        target: Some("unused"),
        ..LintOptions::default()
    };
    assert_eq!(fired(src, &opts), ["LegacyKeyValueFormat"]);
}

#[test]
fn stage_state_is_inherited() {
    let src =
        "FROM busybox AS base\nARG DIR=/x\nWORKDIR /app\n\nFROM base\nCOPY $DIR .\nWORKDIR sub\n";
    assert!(fired(src, &all()).is_empty());
}

#[test]
fn suggestions_are_close_names_only() {
    let keys = ["BUILDPLATFORM", "TARGETARCH"];
    assert_eq!(
        suggest("BUILDPLATFROM", keys.into_iter()),
        Some("BUILDPLATFORM")
    );
    assert_eq!(suggest("VERSION", keys.into_iter()), None);
    assert_eq!(suggest("TARGETARCH", keys.into_iter()), None);
}

#[test]
fn renders_like_buildkit() {
    let src = "FROM busybox\n\nFROM busybox AS Builder\nRUN true\n";
    let report = run(src, &all());
    let w = &report.warnings[0];
    assert_eq!(
        w.short(),
        "StageNameCasing: Stage name 'Builder' should be lowercase (line 3)"
    );
    assert_eq!(
        w.render("Dockerfile", src),
        "WARNING: StageNameCasing - https://docs.docker.com/go/dockerfile/rule/stage-name-casing/\n\
         Stage name 'Builder' should be lowercase\n\
         Dockerfile:3\n\
         --------------------\n   \
         1 |     FROM busybox\n   \
         2 |\n   \
         3 | >>> FROM busybox AS Builder\n   \
         4 |     RUN true\n   \
         5 |\n\
         --------------------\n"
    );
}
