//! Validated config → `Plan`: inputs resolved to indices, duplicate outputs and cycles rejected,
//! stages grouped into topological levels (a level's stages are independent of each other).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use crate::core::config::{self, Config, SourceConfig};
use crate::core::diagnostic::{suggest, Diagnostic, Diagnostics};
use crate::core::stages::InputKind;

/// What one stage reads, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Source(String),
    Stage(usize),
}

#[derive(Debug)]
pub struct Plan {
    pub config: Config,
    /// Per stage (index into `config.stages`), its resolved inputs.
    pub inputs: Vec<Vec<Input>>,
    /// Stages in dependency levels; within a level, in file order.
    pub levels: Vec<Vec<usize>>,
}

/// Parse, validate and plan a config file; every problem found is in the error.
pub fn load_plan(path: &Path) -> Result<Plan, Diagnostics> {
    let (config, mut diagnostics) = config::load(path);
    let Some(config) = config else { return Err(diagnostics) };
    let inputs = resolve_inputs(&config, &mut diagnostics);
    check_outputs(&config, &mut diagnostics);
    let levels = match levels(&config, &inputs) {
        Ok(levels) => levels,
        Err(cycle) => {
            let chain: Vec<String> = cycle.iter().map(|&i| format!("`{}`", config.stages[i].name)).collect();
            let first = &config.stages[cycle[0]];
            diagnostics.error(
                format!("stages form a cycle: {}", chain.join(" → ")),
                first.input_span.clone().or(first.span.clone()),
            );
            Vec::new()
        }
    };
    check_customer_columns(&config, &inputs, &mut diagnostics);
    check_source_columns(&config, &inputs, &mut diagnostics);
    if let crate::core::config::AsOf::Date(as_of) = config.pipeline.as_of {
        for stage in &config.stages {
            if let Some(problem) = stage.stage.as_ref().and_then(|options| options.check_as_of(as_of)) {
                diagnostics.error(format!("stage `{}`: {problem}", stage.name), stage.span.clone());
            }
        }
    }
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    Ok(Plan { config, inputs, levels })
}

/// The per-customer columns a stage groups or summarises by must come from its inputs (the
/// base columns every customer has, and the customer tables of the input stages, as the
/// catalog lists them); `acquisition_channel` without a mapped channel is all null: a warning.
fn check_customer_columns(config: &Config, inputs: &[Vec<Input>], diagnostics: &mut Diagnostics) {
    for (index, stage) in config.stages.iter().enumerate() {
        let Some(wanted) = stage
            .stage
            .as_ref()
            .map(|s| s.customer_columns())
            .filter(|w| !w.is_empty())
        else {
            continue;
        };
        let mut available: Vec<&str> = vec!["customer_id", "revenue", "orders", "acquisition_channel", "cohort"];
        for input in inputs.get(index).into_iter().flatten() {
            if let Input::Stage(upstream) = input {
                let kind = config.stages[*upstream].kind;
                if let Some(table) = kind.customer_table {
                    let suffix = kind.tables[table];
                    available.extend(
                        crate::core::catalog::columns(kind.name, suffix)
                            .iter()
                            .map(|c| c.name)
                            .filter(|n| !n.contains('<')),
                    );
                }
            }
        }
        for column in &wanted {
            if !available.contains(&column.as_str()) {
                let mut diagnostic = crate::core::diagnostic::Diagnostic::new(
                    format!(
                        "stage `{}`: column `{column}` is in no per-customer table of its inputs",
                        stage.name
                    ),
                    stage.span.clone(),
                );
                diagnostic = diagnostic.with_help(Some(
                    crate::core::diagnostic::suggest(column, available.iter().copied()).unwrap_or_else(|| {
                        format!(
                            "available: {}; add the stage that makes it to `input`",
                            available
                                .iter()
                                .map(|c| format!("`{c}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }),
                ));
                diagnostics.push(diagnostic);
            }
        }
        let without_channel = |source: &str| config.sources.get(source).is_some_and(|s| s.columns.channel.is_none());
        let source_of_stage = inputs.get(index).into_iter().flatten().find_map(|input| match input {
            Input::Source(name) => Some(name.clone()),
            Input::Stage(_) => config.sources.keys().next().cloned(),
        });
        if wanted.iter().any(|c| c == "acquisition_channel") && source_of_stage.is_some_and(|s| without_channel(&s)) {
            tracing::warn!(
                "stage `{}` groups by `acquisition_channel`, but the source maps no `channel`: every customer's channel is null",
                stage.name
            );
        }
    }
}

/// The optional columns a stage's options need (`Stage::source_columns`) are mapped by its
/// orders source.
fn check_source_columns(config: &Config, inputs: &[Vec<Input>], diagnostics: &mut Diagnostics) {
    fn orders_source<'a>(
        config: &'a Config,
        inputs: &[Vec<Input>],
        stage: usize,
        depth: usize,
    ) -> Option<&'a SourceConfig> {
        inputs.get(stage)?.iter().find_map(|input| match input {
            Input::Source(name) => config
                .sources
                .get(name)
                .filter(|source| source.kind == crate::core::input::SourceKind::Orders),
            Input::Stage(upstream) if depth < config.stages.len() => {
                orders_source(config, inputs, *upstream, depth + 1)
            }
            Input::Stage(_) => None,
        })
    }
    for (index, stage) in config.stages.iter().enumerate() {
        let Some(needed) = stage.stage.as_ref().map(|s| s.source_columns()) else {
            continue;
        };
        let Some(source) = orders_source(config, inputs, index, 0) else {
            continue;
        };
        for (column, option) in needed {
            if source.columns.physical(column).is_none() {
                diagnostics.push(
                    crate::core::diagnostic::Diagnostic::new(
                        format!(
                            "stage `{}`: {option} needs a `{column}` column, and source `{}` maps none",
                            stage.name, source.name
                        ),
                        stage.span.clone(),
                    )
                    .with_help(Some(format!(
                        "map it under `[sources.{}.columns]` (`{column} = \"<column in the file>\"`), or give a number",
                        source.name
                    ))),
                );
            }
        }
    }
}

/// "an" before a vowel, else "a".
fn article(word: &str) -> &'static str {
    match word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        true => "an",
        false => "a",
    }
}

fn resolve_inputs(config: &Config, diagnostics: &mut Diagnostics) -> Vec<Vec<Input>> {
    let stage_index: BTreeMap<&str, usize> = config
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut candidates: Vec<&str> = config.sources.keys().map(|s| s.as_str()).collect();
    candidates.extend(stage_index.keys());
    let mut resolved = Vec::new();
    for stage in &config.stages {
        let mut inputs = Vec::new();
        for name in &stage.inputs {
            let input = if config.sources.contains_key(name) {
                Input::Source(name.clone())
            } else if let Some(&index) = stage_index.get(name.as_str()) {
                Input::Stage(index)
            } else {
                diagnostics.push(
                    Diagnostic::new(
                        format!("input `{name}` of stage `{}` matches no source or stage", stage.name),
                        stage.input_span.clone(),
                    )
                    .with_help(suggest(name, candidates.iter().copied())),
                );
                continue;
            };
            let mismatch = match (&input, stage.kind.input) {
                (Input::Stage(_), InputKind::Sources(kinds)) => Some(format!(
                    "is a stage, but kind `{}` reads {}",
                    stage.kind.name,
                    if kinds.len() == 1 { "a source" } else { "sources" }
                )),
                (Input::Source(_), InputKind::Stages) => Some(format!(
                    "is a source, but kind `{}` reads other stages",
                    stage.kind.name
                )),
                (Input::Source(source), InputKind::Sources(kinds)) => {
                    let found = config.sources[source].kind;
                    kinds
                        .get(inputs.len())
                        .filter(|wanted| **wanted != found)
                        .map(|wanted| {
                            format!(
                                "is {} `{}` source, but kind `{}` reads {} `{}` source there",
                                article(found.name()),
                                found.name(),
                                stage.kind.name,
                                article(wanted.name()),
                                wanted.name()
                            )
                        })
                }
                _ => None,
            };
            if let Some(mismatch) = mismatch {
                diagnostics.error(
                    format!("input `{name}` of stage `{}` {mismatch}", stage.name),
                    stage.input_span.clone(),
                );
            }
            // Kept even when mismatched, so that cycles are reported too.
            inputs.push(input);
        }
        for wanted in stage
            .stage
            .as_ref()
            .map(|options| options.option_inputs())
            .unwrap_or_default()
        {
            let key = wanted.key;
            let Some(&index) = stage_index.get(wanted.stage.as_str()) else {
                diagnostics.push(
                    Diagnostic::new(
                        format!("key `{key}` of stage `{}`: no stage `{}`", stage.name, wanted.stage),
                        stage.span.clone(),
                    )
                    .with_help(suggest(&wanted.stage, stage_index.keys().copied())),
                );
                continue;
            };
            let found = config.stages[index].kind.name;
            if !wanted.kinds.contains(&found) {
                diagnostics.error(
                    format!(
                        "key `{key}` of stage `{}`: `{}` is a `{found}` stage; `{key}` takes a stage of kind {}",
                        stage.name,
                        wanted.stage,
                        wanted
                            .kinds
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                    stage.span.clone(),
                );
            }
            inputs.push(Input::Stage(index));
        }
        if let InputKind::Sources(kinds) = stage.kind.input {
            if stage.inputs.len() != kinds.len() {
                diagnostics.error(
                    format!(
                        "stage `{}` of kind `{}` reads {}",
                        stage.name,
                        stage.kind.name,
                        stage.kind.input.describe()
                    ),
                    stage.input_span.clone(),
                );
            }
        }
        resolved.push(inputs);
    }
    resolved
}

fn check_outputs(config: &Config, diagnostics: &mut Diagnostics) {
    let mut writers: BTreeMap<&str, &str> = BTreeMap::new();
    for stage in &config.stages {
        for table in &stage.tables {
            if let Some(previous) = writers.insert(table.as_str(), stage.name.as_str()) {
                diagnostics.error(
                    format!("stages `{previous}` and `{}` both write table `{table}`", stage.name),
                    stage.span.clone(),
                );
            }
        }
    }
}

/// Kahn's algorithm; on a cycle, the cycle as a chain of stage indices (first repeated last).
fn levels(config: &Config, inputs: &[Vec<Input>]) -> Result<Vec<Vec<usize>>, Vec<usize>> {
    let n = config.stages.len();
    let deps: Vec<BTreeSet<usize>> = inputs
        .iter()
        .map(|stage_inputs| {
            stage_inputs
                .iter()
                .filter_map(|i| match i {
                    Input::Stage(index) => Some(*index),
                    Input::Source(_) => None,
                })
                .collect()
        })
        .collect();
    let mut level_of: Vec<Option<usize>> = vec![None; n];
    let mut levels: Vec<Vec<usize>> = Vec::new();
    let mut done = 0;
    while done < n {
        let ready: Vec<usize> = (0..n)
            .filter(|&i| level_of[i].is_none() && deps[i].iter().all(|d| level_of[*d].is_some()))
            .collect();
        if ready.is_empty() {
            return Err(find_cycle(&deps, &level_of));
        }
        for &i in &ready {
            level_of[i] = Some(levels.len());
        }
        done += ready.len();
        levels.push(ready);
    }
    Ok(levels)
}

fn find_cycle(deps: &[BTreeSet<usize>], placed: &[Option<usize>]) -> Vec<usize> {
    let start = (0..deps.len())
        .find(|&i| placed[i].is_none())
        .expect("a cycle leaves a stage unplaced");
    let mut path = vec![start];
    let mut current = start;
    loop {
        let next = *deps[current]
            .iter()
            .find(|d| placed[**d].is_none())
            .expect("an unplaced stage has an unplaced dependency");
        if let Some(position) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<usize> = path[position..].to_vec();
            cycle.reverse();
            cycle.push(*cycle.first().expect("cycle is not empty"));
            // Read as "a needs b needs … needs a" reversed into data-flow order.
            return cycle;
        }
        path.push(next);
        current = next;
    }
}

impl Plan {
    /// Indices of the stages to run for `--select`: the named stages and all they need.
    pub fn select(&self, names: &[String]) -> Result<BTreeSet<usize>, String> {
        let mut selected = BTreeSet::new();
        if names.is_empty() {
            selected.extend(0..self.config.stages.len());
            return Ok(selected);
        }
        let mut todo = Vec::new();
        for name in names {
            match self.config.stages.iter().position(|s| &s.name == name) {
                Some(index) => todo.push(index),
                None => {
                    let known: Vec<&str> = self.config.stages.iter().map(|s| s.name.as_str()).collect();
                    let help = suggest(name, known.iter().copied())
                        .unwrap_or_else(|| format!("stages: {}", crate::core::options::backticked(&known)));
                    return Err(format!(
                        "--select: no stage named `{name}` in the config\n  = help: {help}"
                    ));
                }
            }
        }
        while let Some(index) = todo.pop() {
            if selected.insert(index) {
                for input in &self.inputs[index] {
                    if let Input::Stage(dep) = input {
                        todo.push(*dep);
                    }
                }
            }
        }
        Ok(selected)
    }

    /// Sources whose shared tables the selected stages need.
    pub fn sources_needed(&self, selected: &BTreeSet<usize>) -> BTreeSet<String> {
        selected
            .iter()
            .flat_map(|&i| self.inputs[i].iter())
            .filter_map(|input| match input {
                Input::Source(name) => Some(name.clone()),
                Input::Stage(_) => None,
            })
            .collect()
    }

    /// The source a stage's data comes from: its own, or (for stages over stages) the first
    /// source found upstream.
    pub fn source_of(&self, stage: usize) -> Option<String> {
        self.inputs[stage].iter().find_map(|input| match input {
            Input::Source(name) => Some(name.clone()),
            Input::Stage(dep) => self.source_of(*dep),
        })
    }

    fn input_names(&self, stage: usize) -> Vec<String> {
        self.inputs[stage]
            .iter()
            .map(|input| match input {
                Input::Source(name) => format!("source `{name}`"),
                Input::Stage(index) => format!("stage `{}`", self.config.stages[*index].name),
            })
            .collect()
    }

    /// Human-readable plan: sources scanned once, then stages level by level.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let all: BTreeSet<usize> = (0..self.config.stages.len()).collect();
        let _ = writeln!(
            out,
            "pipeline `{}` ({})",
            self.config.pipeline.name,
            self.config.path.display()
        );
        let _ = writeln!(out, "output dir: {}", self.config.pipeline.output_dir.display());
        for source in self.sources_needed(&all) {
            let users: Vec<String> = (0..self.config.stages.len())
                .filter(|&i| self.inputs[i].contains(&Input::Source(source.clone())))
                .map(|i| format!("`{}`", self.config.stages[i].name))
                .collect();
            let path = self
                .config
                .sources
                .get(&source)
                .map(|s| s.path.display().to_string())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "source `{source}` ({path}): scanned once → customer_facts, customer_periods (shared by {})",
                users.join(", ")
            );
        }
        for (level, stages) in self.levels.iter().enumerate() {
            let _ = writeln!(out, "level {}:", level + 1);
            for &index in stages {
                let stage = &self.config.stages[index];
                let _ = writeln!(
                    out,
                    "  {} ({}) ← {} → {}",
                    stage.name,
                    stage.kind.name,
                    self.input_names(index).join(", "),
                    stage.tables.join(", ")
                );
            }
        }
        out
    }

    /// The DAG as a Mermaid flowchart (`--format mermaid`) or Graphviz (`--format dot`).
    pub fn render_graph(&self, mermaid: bool) -> String {
        let mut out = String::new();
        let node = |name: &str| name.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        if mermaid {
            out.push_str("flowchart LR\n");
        } else {
            out.push_str("digraph pipeline {\n  rankdir=LR;\n");
        }
        let mut sources: Vec<&String> = self.config.sources.keys().collect();
        sources.sort();
        for source in sources {
            if mermaid {
                let _ = writeln!(out, "  src_{}[(\"{source}\")]", node(source));
            } else {
                let _ = writeln!(out, "  src_{} [label=\"{source}\", shape=cylinder];", node(source));
            }
        }
        for (index, stage) in self.config.stages.iter().enumerate() {
            let label = format!("{} ({})", stage.name, stage.kind.name);
            if mermaid {
                let _ = writeln!(out, "  st_{}[\"{label}\"]", node(&stage.name));
            } else {
                let _ = writeln!(out, "  st_{} [label=\"{label}\", shape=box];", node(&stage.name));
            }
            for input in &self.inputs[index] {
                let from = match input {
                    Input::Source(name) => format!("src_{}", node(name)),
                    Input::Stage(dep) => format!("st_{}", node(&self.config.stages[*dep].name)),
                };
                if mermaid {
                    let _ = writeln!(out, "  {from} --> st_{}", node(&stage.name));
                } else {
                    let _ = writeln!(out, "  {from} -> st_{};", node(&stage.name));
                }
            }
        }
        if !mermaid {
            out.push_str("}\n");
        }
        out
    }
}
