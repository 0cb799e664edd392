//! kiln end to end: the `kiln` binary against a real registry (`KILN_TEST_REGISTRY`, seeded
//! with library/busybox:latest, the corpus bases busybox:bare and busybox:users, the index
//! busybox:multi (linux/amd64, linux/arm64), the cross compilers gcc:bookworm-cross and, for the
//! example, library/python:3.11-slim),
//! runc and overlayfs. Each test has its own data root; after each, nothing may be mounted under
//! it and no runc container may be left. Without the externals the tests skip with a reason, or
//! fail under `KILN_TEST_REQUIRE_EXTERNAL=1`.

mod add_special;
mod blobs;
mod build_flags;
mod builders;
mod cache;
mod cache_export;
mod cache_mounts;
mod cache_multi;
mod cache_options;
mod cache_s3;
mod concurrent;
mod config;
mod copystream;
mod cross_compile;
mod docker_pull;
mod dockerignore;
mod errors;
mod example;
mod explain;
mod export_docker;
mod export_oci;
mod failure;
mod frontend;
mod gc;
mod git;
mod hostile_context;
mod hostile_load;
mod imagetools;
mod killed;
mod language;
mod language_dropin;
mod lint;
mod load_unnamed;
mod manifest;
mod mounts;
mod multi_archive;
mod multi_inspect;
mod multi_platform;
mod multi_split;
mod multistage;
mod named_contexts;
mod offline;
mod oracle;
mod outputs;
mod pin;
mod platforms;
mod pull;
mod pushstream;
mod registry_auth;
mod remote;
mod run;
mod sandbox;
mod shared_solve;
mod storage;
mod store;
mod support;
mod tar_context;
mod token_auth;
mod users;
