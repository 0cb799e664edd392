use std::sync::Arc;

use anyhow::Result;
use chrono::{DateTime, Utc};
use kiln_exporter::{ContentStore, Error, ImageStore, format_images_table};
use kiln_oci::Reference;

use crate::support::{Layer, build_image, small_image};

fn stores(dir: &std::path::Path) -> Result<(ContentStore, ImageStore)> {
    let content = ContentStore::open(dir.join("content"))?;
    let images = ImageStore::open(&dir.join("images"), content.clone())?;
    Ok((content, images))
}

#[test]
fn tag_get_list_remove_round_trip() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (content, store) = stores(dir.path())?;
    let img = small_image(&content)?;
    let name: Reference = "hello-world-flask".parse()?;

    let before = Utc::now();
    store.tag(&name, &img.manifest)?;
    let rec = store.get(&name)?.expect("tagged image is found");
    assert_eq!(rec.name, name);
    assert_eq!(rec.manifest, img.manifest);
    assert_eq!(rec.config, img.config);
    assert_eq!(rec.size, img.size);
    assert_eq!(
        rec.created,
        Some("2026-01-02T03:04:05Z".parse::<DateTime<Utc>>()?)
    );
    assert!(rec.tagged_at >= before && rec.tagged_at <= Utc::now());

    // The same name in its full form is the same record.
    let full: Reference = "docker.io/library/hello-world-flask:latest".parse()?;
    assert_eq!(store.get(&full)?, Some(rec.clone()));
    assert_eq!(store.list()?, vec![rec]);

    // A store opened afresh sees the same state.
    let reopened = ImageStore::open(&dir.path().join("images"), content.clone())?;
    assert_eq!(reopened.list()?.len(), 1);

    assert!(store.remove(&name)?);
    assert!(!store.remove(&name)?);
    assert_eq!(store.get(&name)?, None);
    assert!(store.list()?.is_empty());
    Ok(())
}

#[test]
fn retagging_replaces_and_list_is_newest_first() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (content, store) = stores(dir.path())?;
    let old = build_image(
        &content,
        &[Layer::text(&[("a", "old")])],
        "2020-01-01T00:00:00Z",
        false,
    )?;
    let new = build_image(
        &content,
        &[Layer::text(&[("a", "new")])],
        "2025-06-01T00:00:00Z",
        true,
    )?;
    let app: Reference = "app:1".parse()?;
    let other: Reference = "registry.local:5000/team/other:v2".parse()?;

    store.tag(&app, &old.manifest)?;
    store.tag(&other, &old.manifest)?;
    store.tag(&app, &new.manifest)?;
    assert_eq!(store.get(&app)?.map(|r| r.config), Some(new.config.clone()));

    let list = store.list()?;
    let names: Vec<String> = list.iter().map(|r| r.name.whole()).collect();
    assert_eq!(
        names,
        vec![
            "docker.io/library/app:1",
            "registry.local:5000/team/other:v2"
        ]
    );

    let now: DateTime<Utc> = "2025-06-01T02:00:00Z".parse()?;
    let table = format_images_table(&list, now);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("REPOSITORY "));
    assert!(new.size < 1000, "the SIZE column below assumes bytes");
    let cols: Vec<&str> = lines[1]
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cols,
        vec![
            "app",
            "1",
            &new.config.digest()[..12],
            "2 hours ago",
            &format!("{}B", new.size)
        ]
    );
    assert!(lines[2].starts_with("registry.local:5000/team/other   v2 "));
    // Every row's IMAGE ID starts at the same column.
    let id_col = lines[0].find("IMAGE ID").unwrap();
    assert_eq!(lines[1].find(&new.config.digest()[..12]), Some(id_col));
    assert_eq!(lines[2].find(&old.config.digest()[..12]), Some(id_col));
    Ok(())
}

#[test]
fn tagging_needs_every_blob_of_the_image_or_index() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (content, store) = stores(dir.path())?;
    let name: Reference = "x".parse()?;
    let absent = kiln_oci::sha256(b"absent");
    assert!(matches!(
        store.tag(&name, &absent),
        Err(Error::MissingBlob(d)) if d == absent
    ));

    let img = small_image(&content)?;
    // An index (several platforms' images under one name) is named with its images.
    let index = crate::support::build_index(&content, &[&img])?;
    store.tag(&name, &index)?;
    let record = store.get(&name)?.expect("tagged");
    assert_eq!(record.index.as_ref(), Some(&index));
    assert_eq!(record.manifest, img.manifest);
    assert!(store.remove(&name)?);

    // A manifest whose layer is gone cannot be named.
    content.delete(&img.layers[1])?;
    assert!(matches!(
        store.tag(&name, &img.manifest),
        Err(Error::MissingBlob(d)) if d == img.layers[1]
    ));
    assert!(matches!(
        store.tag(&name, &index),
        Err(Error::MissingBlob(d)) if d == img.layers[1]
    ));
    assert!(store.list()?.is_empty());
    Ok(())
}

#[test]
fn concurrent_tagging_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (content, _) = stores(dir.path())?;
    let img = small_image(&content)?;
    let root = Arc::new(dir.path().join("images"));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let root = root.clone();
            let content = content.clone();
            let manifest = img.manifest.clone();
            std::thread::spawn(move || -> Result<()> {
                // Each thread opens its own store, as separate processes would.
                let store = ImageStore::open(&root, content)?;
                for i in 0..10 {
                    store.tag(&format!("img{t}:v{i}").parse()?, &manifest)?;
                    store.tag(&"shared:latest".parse()?, &manifest)?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread panicked")?;
    }
    let store = ImageStore::open(&root, content)?;
    let list = store.list()?;
    assert_eq!(list.len(), 8 * 10 + 1);
    for t in 0..8 {
        for i in 0..10 {
            assert!(store.get(&format!("img{t}:v{i}").parse()?)?.is_some());
        }
    }
    // No temp files are left beside the state file.
    let stray: Vec<_> = std::fs::read_dir(&*root)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty());
    Ok(())
}
