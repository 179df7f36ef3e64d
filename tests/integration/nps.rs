//! The `nps` stage over a survey source (CSV) and the extended tiny orders, by hand.

use crate::common::*;

/// Answers as of 2024-03-15: customer 99 never purchased; customer 2 answered twice at one
/// instant (9 and 7: the lower is the last score); a score of 11 and a missing score are
/// rejected; an answer after as_of is ignored; December has no answer.
const SURVEY: &str = "customer_id,responded_at,score
1,2024-01-10 09:00:00,10
1,2024-03-01 12:00:00,6
2,2024-02-05 08:00:00,9
2,2024-02-05 08:00:00,7
3,2024-02-20 10:00:00,8
3,2024-03-05 10:00:00,9
99,2024-01-20 10:00:00,3
12,2023-11-15 10:00:00,5
4,2024-03-10 10:00:00,11
5,2024-03-11 10:00:00,
6,2024-03-20 10:00:00,10
";

const STAGES: &str = "[sources.survey]\nkind = \"survey\"\npath = \"survey.csv\"\n\n[stages.nps]\nkind = \"nps\"\ninput = [\"orders\", \"survey\"]\n";

#[test]
fn nps_by_period_and_respondent() {
    let workspace = Workspace::with_lines(&extended());
    workspace.write("survey.csv", SURVEY);
    let config = workspace.config("", STAGES);
    run_ok(&["run", config.to_str().unwrap()]);
    let periods = read_table(&workspace.out().join("nps_periods.parquet"));
    assert_eq!(
        periods.text("period_start"),
        ["2023-11-01", "2023-12-01", "2024-01-01", "2024-02-01", "2024-03-01"]
    );
    assert_eq!(periods.int("responses"), [1, 0, 2, 3, 2]);
    assert_eq!(periods.int("promoters"), [0, 0, 1, 1, 1]);
    assert_eq!(periods.int("passives"), [0, 0, 0, 2, 0]);
    assert_eq!(periods.int("detractors"), [1, 0, 1, 0, 1]);
    // November: −100; December: no answers, null; January 0; February 100 × 1/3; March 0.
    assert_eq!(periods.text("nps")[1], "");
    let nps = periods.float("nps");
    assert_close(nps[0], -100.0, "nps November");
    assert_close(nps[2], 0.0, "nps January");
    assert_close(nps[3], 100.0 / 3.0, "nps February");
    assert_close(nps[4], 0.0, "nps March");

    let customers = read_table(&workspace.out().join("nps_customers.parquet"));
    assert_eq!(customers.int("customer_id"), [1, 2, 3, 12, 99]);
    assert_eq!(customers.int("responses"), [2, 2, 2, 1, 1]);
    assert_eq!(customers.int("last_score"), [6, 7, 9, 5, 3]);
    assert_eq!(
        customers.text("last_responded_on"),
        ["2024-03-01", "2024-02-05", "2024-03-05", "2023-11-15", "2024-01-20"]
    );
    assert_eq!(
        customers.text("nps_category"),
        ["detractor", "passive", "promoter", "detractor", "detractor"]
    );
    assert_eq!(customers.text("as_of")[0], "2024-03-15");

    // The manifest counts the survey's answers by reason.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(workspace.out().join("_manifest.json")).unwrap()).unwrap();
    let survey = manifest["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|input| input["source"] == "survey")
        .unwrap();
    assert_eq!(survey["rows_read"], 11);
    assert_eq!(survey["rows_rejected"]["invalid_score"], 2);
    assert_eq!(survey["rows_rejected_total"], 2);
    assert_eq!(survey["rows_ignored_after_as_of"], 1);
}

#[test]
fn survey_errors_name_the_source_and_column() {
    let workspace = Workspace::with_lines(&extended());
    // Text ids against the orders' integer ids: `validate` says so.
    workspace.write("survey.csv", "customer_id,responded_at,score\na1,2024-01-10,9\n");
    let config = workspace.config("", STAGES);
    let output = pipeline(&["validate", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("source `survey`: its customer_id holds text, but orders source `orders` holds integers"),
        "{}",
        stderr(&output)
    );
    // A missing column is named with the nearest one.
    workspace.write("survey.csv", "customer_id,responded_at,scores\n1,2024-01-10,9\n");
    let output = pipeline(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no column `score` (mapped as `score`)") && stderr(&output).contains("`scores`"),
        "{}",
        stderr(&output)
    );
    // Too many rejected answers fail the run, naming the reason.
    workspace.write(
        "survey.csv",
        "customer_id,responded_at,score\n1,2024-01-10,12\n2,2024-01-11,9\n",
    );
    let output = pipeline(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("1 of 2 answers rejected (50.0000%): invalid_score 1"),
        "{}",
        stderr(&output)
    );
    // Filters are for orders sources; an nps stage needs a survey source second.
    let config = workspace.config(
        "",
        "[sources.survey]\nkind = \"survey\"\npath = \"survey.csv\"\ninclude = { score = [9] }\n\n[stages.nps]\nkind = \"nps\"\ninput = [\"survey\", \"orders\"]\n",
    );
    let output = pipeline(&["validate", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("key `include` of source `survey`: filters are for orders sources"),
        "{text}"
    );
    assert!(
        text.contains(
            "input `survey` of stage `nps` is a `survey` source, but kind `nps` reads an `orders` source there"
        ),
        "{text}"
    );
}

/// A segment summary over the nps stage groups the buyers by their category, and gives every
/// group its respondents and NPS from last scores; customer 99 never purchased and is in no
/// group. Buyers 1, 2, 3 (categories detractor, passive, promoter) answered; 11, 12, 13 did not
/// (12's answer is customer 12's, who has purchases).
#[test]
fn segment_summary_by_nps_category() {
    let workspace = Workspace::with_lines(&extended());
    workspace.write("survey.csv", SURVEY);
    let stages = format!(
        "{STAGES}\n[stages.by_category]\nkind = \"segment_summary\"\ninput = [\"nps\"]\nby = [\"nps_category\"]\n\n[stages.facts]\nkind = \"customer_facts\"\ninput = \"orders\"\n\n[stages.overall]\nkind = \"segment_summary\"\ninput = [\"facts\", \"nps\"]\nby = [\"acquisition_channel\"]\n"
    );
    let config = workspace.config("", &stages);
    run_ok(&["run", config.to_str().unwrap()]);
    let summary = read_table(&workspace.out().join("by_category.parquet"));
    assert_eq!(summary.text("nps_category"), ["detractor", "passive", "promoter", ""]);
    let customers = summary.int("customers");
    assert_eq!(&customers[..3], [2, 1, 1], "detractors: customers 1 and 12");
    assert_eq!(summary.int("respondents")[..3], [2, 1, 1]);
    let nps = summary.float("nps");
    assert_close(nps[0], -100.0, "detractors");
    assert_close(nps[1], 0.0, "passives");
    assert_close(nps[2], 100.0, "promoters");
    assert_eq!(summary.int("respondents")[3], 0);
    assert_eq!(summary.text("nps")[3], "", "no respondents: null");
    // By channel, every group has respondents and nps columns.
    let overall = read_table(&workspace.out().join("overall.parquet"));
    let respondents: i64 = overall.int("respondents").iter().sum();
    assert_eq!(respondents, 4, "buyers 1, 2, 3 and 12 answered");
}

/// Text customer ids on both sides, answers in a Parquet file with zoned timestamps: the same
/// categories as the CSV fixture, and the summary joins on the text ids. A zone moves an answer
/// to its local date: 2024-01-31 23:30 UTC is 2024-02-01 in Berlin.
#[test]
fn text_ids_and_zoned_timestamps() {
    use polars::prelude::*;
    let workspace = Workspace::new();
    let mut frame = lines_frame(&extended());
    let text_ids = frame.column("customer_id").unwrap().cast(&DataType::String).unwrap();
    frame.with_column(text_ids).unwrap();
    write_parquet(&mut frame, &workspace.path("lines.parquet"));
    let at = |text: &str| {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp_micros()
    };
    let mut answers = df!(
        "customer_id" => ["1", "2", "3"],
        "responded_at" => [at("2024-01-31 23:30"), at("2024-02-10 10:00"), at("2024-03-01 10:00")],
        "score" => [9i8, 7, 2],
    )
    .unwrap();
    let zoned = answers
        .column("responded_at")
        .unwrap()
        .cast(&DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC)))
        .unwrap();
    answers.with_column(zoned).unwrap();
    write_parquet(&mut answers, &workspace.path("answers.parquet"));
    let config = workspace.config(
        "timezone = \"Europe/Berlin\"",
        "[sources.survey]\nkind = \"survey\"\npath = \"answers.parquet\"\n\n[stages.nps]\nkind = \"nps\"\ninput = [\"orders\", \"survey\"]\n\n[stages.by_category]\nkind = \"segment_summary\"\ninput = [\"nps\"]\nby = [\"nps_category\"]\n",
    );
    run_ok(&["run", config.to_str().unwrap()]);
    let periods = read_table(&workspace.out().join("nps_periods.parquet"));
    assert_eq!(periods.text("period_start"), ["2024-02-01", "2024-03-01"]);
    assert_eq!(periods.int("responses"), [2, 1]);
    let customers = read_table(&workspace.out().join("nps_customers.parquet"));
    assert_eq!(customers.text("customer_id"), ["1", "2", "3"]);
    assert_eq!(customers.text("last_responded_on")[0], "2024-02-01");
    let summary = read_table(&workspace.out().join("by_category.parquet"));
    assert_eq!(summary.text("nps_category"), ["detractor", "passive", "promoter", ""]);
    assert_eq!(summary.int("respondents")[..3], [1, 1, 1]);
}
