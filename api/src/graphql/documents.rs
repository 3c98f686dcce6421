//! Parsed GraphQL documents by query text.
//!
//! Apps send the same few documents again and again, and parsing one (pest)
//! costs more than resolving a small query: about a tenth of a
//! `generations(first: 20)` request's CPU. Parsing is a pure function of the
//! text, so a parsed document is reused for the same text; validation, depth
//! and complexity limits still run on every request.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use async_graphql::parser::types::ExecutableDocument;

/// Distinct documents kept; past this the cache starts over, so a client that
/// sends ever-new documents costs memory bounded by this, not by its traffic.
const MAX_DOCUMENTS: usize = 256;
/// Longer documents are parsed every time (and not kept).
const MAX_QUERY_BYTES: usize = 16 * 1024;

#[derive(Default)]
pub struct Documents(RwLock<HashMap<Box<str>, ExecutableDocument>>);

impl Documents {
    /// Gives the request its parsed document: the kept one for its text, else
    /// parsed now and kept. A document that does not parse is left to
    /// async-graphql, which answers the parse error.
    pub fn prepare(&self, request: &mut async_graphql::Request) {
        if request.query.len() > MAX_QUERY_BYTES {
            return;
        }
        let kept = self.0.read().unwrap_or_else(PoisonError::into_inner).get(request.query.as_str()).cloned();
        if let Some(doc) = kept {
            request.set_parsed_query(doc);
            return;
        }
        let Ok(doc) = request.parsed_query() else { return };
        let doc = doc.clone();
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_DOCUMENTS {
            map.clear();
        }
        map.insert(request.query.as_str().into(), doc);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.read().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_names(doc: &ExecutableDocument) -> Vec<String> {
        use async_graphql::parser::types::{DocumentOperations, Selection};
        let DocumentOperations::Single(op) = &doc.operations else { panic!("one operation") };
        op.node
            .selection_set
            .node
            .items
            .iter()
            .map(|s| match &s.node {
                Selection::Field(f) => f.node.name.node.to_string(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn the_same_text_gets_the_kept_document_and_another_text_its_own() {
        let docs = Documents::default();
        let mut first = async_graphql::Request::new("{ me { id } }");
        docs.prepare(&mut first);
        let mut again = async_graphql::Request::new("{ me { id } }");
        docs.prepare(&mut again);
        let mut other = async_graphql::Request::new("{ plans { id } }");
        docs.prepare(&mut other);
        assert_eq!(docs.len(), 2);
        assert_eq!(field_names(again.parsed_query().expect("parsed")), ["me"]);
        assert_eq!(field_names(other.parsed_query().expect("parsed")), ["plans"]);
    }

    #[test]
    fn unparsable_and_oversized_documents_are_not_kept() {
        let docs = Documents::default();
        let mut broken = async_graphql::Request::new("{ me { ");
        docs.prepare(&mut broken);
        let mut huge =
            async_graphql::Request::new(format!("{{ me {{ id }} }}{}", " ".repeat(MAX_QUERY_BYTES)));
        docs.prepare(&mut huge);
        assert_eq!(docs.len(), 0);
    }

    #[test]
    fn the_cache_starts_over_when_full() {
        let docs = Documents::default();
        for i in 0..=MAX_DOCUMENTS {
            docs.prepare(&mut async_graphql::Request::new(format!("{{ a{i}: me {{ id }} }}")));
        }
        assert_eq!(docs.len(), 1);
    }
}
