//! A sink that keeps tables in memory: staged tables become the published set only on
//! `publish`, as in a snapshot folder.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use anyhow::Result;
use polars::prelude::DataFrame;

use super::{Sink, TableMetadata};
use crate::core::manifest::{CarriedTable, Manifest};

#[derive(Debug, Default)]
pub struct MemorySink {
    staged: Mutex<BTreeMap<String, DataFrame>>,
    /// The last publication's tables, and its manifest.
    pub published: BTreeMap<String, DataFrame>,
    pub manifest: Option<Manifest>,
    /// The manifest of every run's end, succeeded or failed (`_last_run.json`).
    pub last_run: Option<Manifest>,
}

impl Sink for MemorySink {
    fn start(&mut self, manifest: &Manifest) -> Result<()> {
        self.staged.get_mut().expect("staging lock").clear();
        self.last_run = Some(manifest.clone());
        Ok(())
    }

    fn stage(&self, name: &str, frame: &mut DataFrame, _metadata: &TableMetadata) -> Result<usize> {
        let mut staged = self
            .staged
            .lock()
            .map_err(|_| anyhow::anyhow!("staging lock poisoned"))?;
        staged.insert(name.to_string(), frame.clone());
        Ok(frame.height())
    }

    fn carry_over(&mut self, tables: &BTreeSet<String>, manifest: &mut Manifest) -> Result<()> {
        let previous = self.manifest.as_ref();
        let staged = self.staged.get_mut().expect("staging lock");
        for name in tables {
            if let Some(frame) = self.published.get(name) {
                staged.insert(name.clone(), frame.clone());
                manifest.carried_over.push(CarriedTable {
                    table: name.clone(),
                    path: name.clone(),
                    from_run_id: previous.map(|m| m.run_id.clone()),
                    as_of: previous.and_then(|m| m.as_of.clone()),
                    stage: None,
                    kind: None,
                    suffix: None,
                });
            }
        }
        Ok(())
    }

    fn publish(&mut self, manifest: &mut Manifest) -> Result<()> {
        manifest.snapshot = Some(format!("memory:{}", manifest.run_id));
        self.published = std::mem::take(self.staged.get_mut().expect("staging lock"));
        self.manifest = Some(manifest.clone());
        self.last_run = Some(manifest.clone());
        Ok(())
    }

    fn fail(&mut self, manifest: &Manifest) {
        self.staged.get_mut().expect("staging lock").clear();
        self.last_run = Some(manifest.clone());
    }
}
