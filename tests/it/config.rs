//! `audience validate` on broken configs: every problem with its key path, exit 2.

use crate::support::{audience, edit_config, sample_copy};

fn validate(dir: &std::path::Path) -> (i32, String) {
    let (code, out, err) = audience(&["validate", "--project", dir.to_str().expect("utf-8 path")]);
    (code, format!("{out}{err}"))
}

#[test]
fn config_sample_is_valid() {
    let dir = sample_copy();
    let (code, out) = validate(dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn config_unknown_key_named_with_suggestion() {
    let dir = sample_copy();
    edit_config(dir.path(), "path = \"data/crm/\"", "pth = \"data/crm/\"");
    let (code, out) = validate(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("audience.toml: datasets.crm.pth: unknown key `pth`: did you mean `path`? valid keys are `kind`"), "{out}");
}

#[test]
fn config_wrong_type_named() {
    let dir = sample_copy();
    edit_config(dir.path(), "priority = 1", "priority = \"high\"");
    let (code, out) = validate(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("namespaces.crm_id.priority: invalid type: string \"high\", expected u32"),
        "{out}"
    );
}

#[test]
fn config_unknown_dataset_in_policy() {
    let dir = sample_copy();
    edit_config(
        dir.path(),
        "method = \"timestamp\"",
        "method = \"precedence\"\nprecedence = [\"crn\", \"loyalty\"]",
    );
    let (code, out) = validate(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(
            "merge_policies.latest.precedence[0]: unknown dataset `crn`: did you mean `crm`?"
        ),
        "{out}"
    );
}

#[test]
fn config_missing_segment_folder() {
    let dir = sample_copy();
    std::fs::remove_dir_all(dir.path().join("sql/segments")).expect("rm");
    let (code, out) = validate(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("project.segments: segments folder `sql/segments` cannot be read"),
        "{out}"
    );
    // The destinations' segments are then unknown, and reported in the same run.
    assert!(
        out.contains("destinations.crm_lists.segments[0]: unknown segment `high_value`"),
        "{out}"
    );
}

#[test]
fn config_misspelled_namespace() {
    let dir = sample_copy();
    edit_config(
        dir.path(),
        "identities = { email = \"email\" }",
        "identities = { email = \"emial\" }",
    );
    let (code, out) = validate(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(
            "datasets.prospects.identities.email: unknown namespace `emial`: did you mean `email`?"
        ),
        "{out}"
    );
}

#[test]
fn config_problems_reported_together() {
    let dir = sample_copy();
    edit_config(dir.path(), "path = \"data/crm/\"", "pth = \"data/crm/\"");
    edit_config(
        dir.path(),
        "identities = { email = \"email\" }",
        "identities = { email = \"emial\" }",
    );
    edit_config(
        dir.path(),
        "segments = [\"prospects_london\"]",
        "segments = [\"prospects_londn\"]",
    );
    let (code, out) = validate(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("3 problems"), "{out}");
    assert!(out.contains("did you mean `prospects_london`?"), "{out}");
}

#[test]
fn config_segment_sql_read_only_and_unknown_relations() {
    let dir = sample_copy();
    std::fs::write(
        dir.path().join("sql/segments/evil.sql"),
        "COPY profiles TO '/tmp/x.csv'",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("sql/segments/typo.sql"),
        "SELECT profile_id FROM profils",
    )
    .expect("write");
    let (code, out) = validate(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(
            "sql/segments/evil.sql: only a read-only SELECT query is allowed; `COPY` is refused"
        ),
        "{out}"
    );
    assert!(
        out.contains("sql/segments/typo.sql: unknown relation `profils`: did you mean `profiles`?"),
        "{out}"
    );
}

#[test]
fn config_segment_cycle_names_files() {
    let dir = sample_copy();
    std::fs::write(
        dir.path().join("sql/segments/a.sql"),
        "SELECT profile_id FROM b",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("sql/segments/b.sql"),
        "SELECT profile_id FROM a",
    )
    .expect("write");
    let (code, out) = validate(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("dependency cycle between sql/segments/a.sql, sql/segments/b.sql"),
        "{out}"
    );
}

#[test]
fn config_phone_region_checked() {
    let dir = sample_copy();
    edit_config(
        dir.path(),
        "default_region = \"GB\"",
        "default_region = \"XX\"",
    );
    edit_config(
        dir.path(),
        "normaliser = \"id\"\npriority = 5",
        "normaliser = \"id\"\npriority = 5\ndefault_region = \"GB\"",
    );
    let (code, out) = validate(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("namespaces.phone.default_region: `XX` is not a known ISO 3166 region code"),
        "{out}"
    );
    assert!(
        out.contains(
            "namespaces.cookie.default_region: only phone namespaces take a default_region"
        ),
        "{out}"
    );
    assert!(out.contains("2 problems"), "{out}");
}
