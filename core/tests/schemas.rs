//! The committed `schemas/` must equal what the code generates.

use std::path::PathBuf;

use embark_core::schema::{documents, render};

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

#[test]
fn schemas_match_the_code() {
    let update = std::env::var_os("EMBARK_UPDATE_SCHEMAS").is_some_and(|v| v == "1");
    let mut drifted = Vec::new();
    for doc in documents() {
        let path = schemas_dir().join(doc.path);
        let want = render(&doc.json);
        if update {
            std::fs::create_dir_all(path.parent().expect("schema paths have a folder")).expect("create schemas folder");
            std::fs::write(&path, &want).expect("write schema");
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            drifted.push(doc.path);
        }
    }
    assert!(
        drifted.is_empty(),
        "schemas/ differs from the Rust types for {drifted:?}.\n\
         Regenerate with: EMBARK_UPDATE_SCHEMAS=1 cargo test -p embark-core --test schemas\n\
         then: npm run gen:types (the shim's TypeScript types), and commit both."
    );
}
