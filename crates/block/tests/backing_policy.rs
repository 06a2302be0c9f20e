//! The backing policy given for an image binds its whole chain: a link
//! deep in the chain that leads outside the allowed directories is refused.

use std::io;
use std::path::{Path, PathBuf};

use block::qcow2::{CreateOptions, Qcow2Image, Qcow2Options};
use block::{open_image, BackingError, BackingPolicy, ImageOptions};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn overlay(path: &Path, backing: &str, format: &str) {
    Qcow2Image::create(
        path,
        &CreateOptions {
            size: 1 << 20,
            backing_file: Some(backing.into()),
            backing_format: Some(format.into()),
            ..Default::default()
        },
    )
    .unwrap();
}

fn open(path: &Path, policy: BackingPolicy) -> io::Result<Box<dyn block::DiskFile>> {
    open_image(
        path,
        &ImageOptions {
            read_only: true,
            qcow2: Qcow2Options {
                backing_policy: policy,
                ..Default::default()
            },
            ..Default::default()
        },
    )
}

#[test]
fn the_whole_chain_inherits_the_policy() {
    let root = std::env::temp_dir().join(format!("ferrovisor-policy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let guard = Dir(root.clone());
    let images = root.join("images");
    let other = root.join("other");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("secret"), vec![0x5a; 1 << 20]).unwrap();
    // top -> mid (same directory) -> ../other/secret.
    overlay(&images.join("mid.qcow2"), "../other/secret", "raw");
    overlay(&images.join("top.qcow2"), "mid.qcow2", "qcow2");
    let top = images.join("top.qcow2");

    let err = open(&top, BackingPolicy::Within(vec![images.clone()]))
        .err()
        .expect("refused");
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("secret") && msg.contains("--backing-dir"),
        "{msg}"
    );

    // The first link refused directly: the typed error is inside.
    let err = open(
        &images.join("mid.qcow2"),
        BackingPolicy::Within(vec![images.clone()]),
    )
    .err()
    .expect("refused");
    assert!(
        matches!(
            err.get_ref().and_then(|e| e.downcast_ref::<BackingError>()),
            Some(BackingError::Outside { .. })
        ),
        "{err}"
    );

    let mut buf = [0u8; 4];
    for policy in [
        BackingPolicy::Within(vec![images.clone(), other.clone()]),
        BackingPolicy::Within(vec!["/".into()]),
        BackingPolicy::Anywhere,
    ] {
        let disk = open(&top, policy).unwrap();
        block::read_exact_at(disk.as_ref(), &mut buf, 0).unwrap();
        assert_eq!(buf, [0x5a; 4]);
    }
    drop(guard);
}
