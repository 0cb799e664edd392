//! `-o type=oci,dest=X.tar`: the tarball is an OCI image layout whose blobs hash to their names
//! and whose config's diff_ids match the layers, checked twice: by kiln-exporter's verifier and
//! by hand here.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::Value;

use crate::support::{Kiln, read_tar};

/// Reads `blobs/sha256/<hex>` for a descriptor, checking its digest and size.
pub fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, desc: &Value) -> &'a [u8] {
    let digest = desc["digest"].as_str().expect("descriptor digest");
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let data = files
        .get(&format!("blobs/sha256/{hex}"))
        .unwrap_or_else(|| panic!("blob {digest} missing"));
    assert_eq!(
        kiln_oci::sha256(data).to_string(),
        digest,
        "blob content does not hash to its name"
    );
    assert_eq!(
        desc["size"].as_u64(),
        Some(data.len() as u64),
        "size of {digest}"
    );
    data
}

/// The image manifest an OCI layout's index.json leads to (through nested indexes).
pub fn layout_image(files: &BTreeMap<String, Vec<u8>>) -> (Value, Value) {
    let layout: Value = serde_json::from_slice(&files["oci-layout"]).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let mut index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    loop {
        let manifests = index["manifests"].as_array().expect("index manifests");
        assert_eq!(manifests.len(), 1, "{index}");
        let desc = manifests[0].clone();
        let doc: Value = serde_json::from_slice(blob(files, &desc)).unwrap();
        if doc.get("manifests").is_some() {
            index = doc;
            continue;
        }
        let config: Value = serde_json::from_slice(blob(files, &doc["config"])).unwrap();
        return (doc, config);
    }
}

#[test]
fn oci_output_is_a_valid_layout() {
    let Some(k) = Kiln::new("oci_output_is_a_valid_layout") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY hello.txt /app/hello.txt\nRUN echo built > /app/built.txt\n",
            ),
            ("hello.txt", "hello from the context\n"),
        ],
    );
    let dest = k.dir().join("image.tar");
    let name = k.unique("oci");
    let spec = format!("type=oci,dest={}", dest.display());
    k.build(&ctx, &["-t", &name, "-o", &spec]).ok();

    let summary = kiln_exporter::verify::verify_oci_archive(&dest).expect("the archive verifies");
    assert_eq!(summary.manifests.len(), 1, "{summary:?}");
    assert_eq!(summary.unchecked_diff_ids, 0);

    let files = read_tar(&dest).unwrap();
    let (manifest, config) = layout_image(&files);
    let layers = manifest["layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    // busybox's layer, then COPY and RUN.
    assert!(layers.len() >= 3, "{manifest}");
    let mut contents = Vec::new();
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let raw = blob(&files, layer);
        // A COPY from the context is stored (and, until export compresses, exported) as a
        // plain tar; the media type says which.
        let mut tar = Vec::new();
        let media_type = layer["mediaType"].as_str().unwrap();
        if media_type.ends_with("gzip") {
            flate2::read::MultiGzDecoder::new(raw)
                .read_to_end(&mut tar)
                .expect("gzip layers are gzip");
        } else {
            assert!(
                media_type.ends_with(".tar"),
                "layers are gzip or tar: {media_type}"
            );
            tar = raw.to_vec();
        }
        assert_eq!(
            kiln_oci::sha256(&tar).to_string(),
            diff_id.as_str().unwrap(),
            "diff_id of {}",
            layer["digest"]
        );
        let mut names = Vec::new();
        let mut archive = tar::Archive::new(tar.as_slice());
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = String::new();
            if e.header().entry_type().is_file() {
                let _ = e.read_to_string(&mut data);
            }
            names.push((path, data));
        }
        contents.push(names);
    }
    let last_two = &contents[contents.len() - 2..];
    assert!(
        last_two[0]
            .iter()
            .any(|(p, d)| p.trim_start_matches("./") == "app/hello.txt"
                && d == "hello from the context\n"),
        "COPY layer: {:?}",
        last_two[0]
    );
    assert!(
        last_two[1]
            .iter()
            .any(|(p, d)| p.trim_start_matches("./") == "app/built.txt" && d == "built\n"),
        "RUN layer: {:?}",
        last_two[1]
    );
    assert_eq!(config["os"], "linux");
    assert_eq!(
        config["history"]
            .as_array()
            .map(|h| h.iter().filter(|e| e["empty_layer"] != true).count()),
        Some(layers.len())
    );
}
