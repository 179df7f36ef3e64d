//! Config errors: exit code 2, every message names the file, the stage and the key, with
//! line:column and a suggestion; all errors of a file are reported in one run.

use crate::common::*;

fn check(config_text: &str) -> String {
    let workspace = Workspace::with_tiny();
    let config = workspace.write("pipeline.toml", config_text);
    let output = pipeline(&["validate", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(&output));
    assert!(
        !workspace.root().exists(),
        "a config error must not touch the output directory"
    );
    stderr(&output)
}

const SOURCE: &str = r#"
[sources.orders]
path = "lines.parquet"
[sources.orders.columns]
ordered_at = "created_at"
amount = "line_amount"
channel = "channel"
"#;

#[test]
fn unknown_key_names_file_line_stage_and_suggests() {
    let text = check(&format!(
        "{SOURCE}\n[stages.cohorts]\nkind = \"cohort_retention\"\ninput = \"orders\"\ngranularty = \"week\"\n"
    ));
    assert!(
        text.contains("error: stage `cohorts` has no key `granularty`"),
        "{text}"
    );
    assert!(text.contains("pipeline.toml:12:1"), "{text}");
    assert!(text.contains("help: did you mean `granularity`?"), "{text}");
}

#[test]
fn missing_input_suggests_the_nearest_source() {
    let text = check(&format!(
        "{SOURCE}\n[stages.cohorts]\nkind = \"cohort_retention\"\ninput = \"ordes\"\n"
    ));
    assert!(
        text.contains("input `ordes` of stage `cohorts` matches no source or stage"),
        "{text}"
    );
    assert!(text.contains("pipeline.toml:11:9"), "{text}");
    assert!(text.contains("did you mean `orders`?"), "{text}");
}

#[test]
fn cycle_is_printed_as_the_chain() {
    let text = check(&format!(
        "{SOURCE}\n[stages.a]\nkind = \"cohort_retention\"\ninput = \"b\"\n\n[stages.b]\nkind = \"cohort_retention\"\ninput = \"a\"\n"
    ));
    assert!(
        text.contains("stages form a cycle: `a` → `b` → `a`") || text.contains("stages form a cycle: `b` → `a` → `b`"),
        "{text}"
    );
    assert!(
        text.contains("input `b` of stage `a` is a stage, but kind `cohort_retention` reads a source"),
        "{text}"
    );
}

#[test]
fn bad_type_and_bad_value_name_the_key() {
    let text = check(&format!(
        "[pipeline]\nmax_rejected_fraction = \"lots\"\nas_of = \"2024-13-01\"\ntimezone = \"Europe/Berln\"\n{SOURCE}\n[stages.cohorts]\nkind = \"cohort_retention\"\ninput = \"orders\"\ngranularity = \"fortnight\"\ndimensions = \"acquisition_channel\"\n"
    ));
    assert!(
        text.contains("key `max_rejected_fraction` of `[pipeline]` is invalid"),
        "{text}"
    );
    assert!(text.contains("pipeline.toml:2:25"), "{text}");
    assert!(
        text.contains("key `as_of` of `[pipeline]` is invalid: `2024-13-01` is not a date"),
        "{text}"
    );
    assert!(text.contains("unknown time zone `Europe/Berln`"), "{text}");
    assert!(text.contains("did you mean `Europe/Berlin`?"), "{text}");
    assert!(
        text.contains("key `granularity` of stage `cohorts` is invalid: unknown variant `fortnight`"),
        "{text}"
    );
    assert!(
        text.contains("key `dimensions` of stage `cohorts` is invalid"),
        "{text}"
    );
    assert!(text.contains("5 errors in"), "{text}");
}

#[test]
fn missing_environment_variable_is_an_error_with_a_default_hint() {
    std::env::remove_var("PIPELINE_TEST_SURELY_UNSET");
    let text = check(&format!(
        "[pipeline]\noutput_dir = \"${{PIPELINE_TEST_SURELY_UNSET}}/out\"\n{SOURCE}\n[stages.cohorts]\nkind = \"cohort_retention\"\ninput = \"orders\"\n"
    ));
    assert!(
        text.contains("key `output_dir` of `[pipeline]`: environment variable `PIPELINE_TEST_SURELY_UNSET` is not set"),
        "{text}"
    );
    assert!(text.contains("pipeline.toml:2:14"), "{text}");
}

#[test]
fn all_errors_are_reported_together_in_file_order() {
    let text = check(&format!(
        "[pipeline]\nnmae = \"x\"\n{SOURCE}\n[stages.facts]\nkind = \"customer_fact\"\ninput = \"orders\"\n\n[stages.cohorts]\nkind = \"cohort_retention\"\ninput = \"orders\"\nbins = 5\n\n[stages.again]\nkind = \"cohort_retention\"\ninput = \"orders\"\noutput = \"cohorts\"\n"
    ));
    let positions: Vec<usize> = [
        "`[pipeline]` has no key `nmae`",
        "stage `facts` has unknown kind `customer_fact`",
        "stage `cohorts` has no key `bins`",
        "stages `cohorts` and `again` both write table `cohorts`",
    ]
    .iter()
    .map(|needle| {
        text.find(needle)
            .unwrap_or_else(|| panic!("missing {needle:?} in\n{text}"))
    })
    .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "not in file order:\n{text}");
    assert!(text.contains("did you mean `name`?"), "{text}");
    assert!(text.contains("did you mean `customer_facts`?"), "{text}");
    assert!(text.contains("4 errors in"), "{text}");
}

#[test]
fn unknown_select_is_a_usage_error() {
    let workspace = Workspace::with_tiny();
    let config = workspace.config(
        "",
        "[stages.cohorts]\nkind = \"cohort_retention\"\ninput = \"orders\"\n",
    );
    let output = pipeline(&["run", config.to_str().unwrap(), "--select", "cohort"]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(text.contains("no stage named `cohort`"), "{text}");
    assert!(text.contains("did you mean `cohorts`?"), "{text}");
}

/// Sources have a kind (`orders` by default); a stage takes sources of the kinds its kind
/// reads, one each.
#[test]
fn source_kinds_are_checked_against_what_a_stage_reads() {
    let text = check("[sources.orders]\nkind = \"ordrs\"\npath = \"lines.parquet\"\n\n[stages.facts]\nkind = \"customer_facts\"\ninput = \"orders\"\n");
    assert!(
        text.contains("key `kind` of source `orders`: unknown source kind `ordrs`"),
        "{text}"
    );
    assert!(text.contains("did you mean `orders`?"), "{text}");
    let two = format!(
        "{SOURCE}\n[sources.more]\npath = \"lines.parquet\"\n\n[stages.rfm]\nkind = \"rfm\"\ninput = [\"orders\", \"more\"]\n"
    );
    let text = check(&two);
    assert!(
        text.contains("stage `rfm` of kind `rfm` reads the name of one orders source"),
        "{text}"
    );
    // Without `input`, a stage reads the one source of its kind; with two there is no default.
    let text = check(&format!(
        "{SOURCE}\n[sources.more]\npath = \"lines.parquet\"\n\n[stages.rfm]\nkind = \"rfm\"\n"
    ));
    assert!(
        text.contains("stage `rfm` is missing required key `input` (the name of one orders source)"),
        "{text}"
    );
}
