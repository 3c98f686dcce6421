//! Bounds on an operation's size, checked on the parsed document before
//! async-graphql validates it.
//!
//! async-graphql's validation, depth and complexity checks walk a fragment
//! again at every spread of it, so a document of fragments that each spread
//! the next twice costs 2^n to check: 31 such fragments (1.5 KB) kept a core
//! busy for minutes before a single field ran. Here the document is walked
//! once, each fragment's expanded size computed once and remembered, and an
//! operation whose expansion is larger than the complexity limit (no
//! operation that large could pass it anyway: every field costs at least 1)
//! is refused before anything else looks at it. What passes expands to at
//! most that many fields, which bounds every later walk of it.

use std::collections::HashMap;

use async_graphql::Positioned;
use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};

/// What one operation may be.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Fields of the document once every fragment is expanded (the
    /// complexity limit).
    pub max_fields: usize,
    /// Fragment spreads written in the document.
    pub max_spreads: usize,
    /// Root fields of a mutation (each alias counts): a mutation's root
    /// fields run one after another, and a batch of hundreds of `login`s or
    /// `register`s in one request is how rate limits are dodged.
    pub max_root_mutations: usize,
}

/// Why a document was refused; the message is the client's.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub String);

/// Fragment spreads a document may contain; real clients' documents have a
/// few dozen at most.
pub const MAX_SPREADS: usize = 256;

pub fn check(doc: &ExecutableDocument, budget: &Budget) -> Result<(), Refused> {
    // As written in the text, fragments and operations alike.
    let spreads = doc.fragments.values().map(|f| spreads(&f.node.selection_set)).sum::<usize>()
        + doc.operations.iter().map(|(_, op)| spreads(&op.node.selection_set)).sum::<usize>();
    if spreads > budget.max_spreads {
        return Err(Refused(format!(
            "the document has {spreads} fragment spreads; at most {} are accepted",
            budget.max_spreads
        )));
    }
    let mut fields = Expanded::new(doc, Count::Fields);
    let mut roots = Expanded::new(doc, Count::RootFields);
    let mut total = 0usize;
    for (_, op) in doc.operations.iter() {
        total = total.saturating_add(fields.size(&op.node.selection_set, 0));
        if op.node.ty == OperationType::Mutation {
            let n = roots.size(&op.node.selection_set, 0);
            if n > budget.max_root_mutations {
                return Err(Refused(format!(
                    "a mutation may have at most {} root fields (aliases count one each); this one has \
                     {n}: send the rest in further requests",
                    budget.max_root_mutations
                )));
            }
        }
    }
    if total > budget.max_fields {
        return Err(Refused(format!(
            "the operation is too large: {} fields once its fragments are expanded, at most {} \
             (MAGE_GRAPHQL_MAX_COMPLEXITY)",
            if total == usize::MAX { "too many".to_owned() } else { total.to_string() },
            budget.max_fields
        )));
    }
    Ok(())
}

fn spreads(set: &Positioned<SelectionSet>) -> usize {
    set.node
        .items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(f) => spreads(&f.node.selection_set),
            Selection::InlineFragment(f) => spreads(&f.node.selection_set),
            Selection::FragmentSpread(_) => 1,
        })
        .sum()
}

/// Nesting (selection sets and fragment references together) past which a
/// document is not walked further; the parser already stops selection sets
/// at 64 levels, so only chains of fragments reach this.
const MAX_NESTING: usize = 512;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Count {
    /// Every field, at any depth.
    Fields,
    /// Fields of the selection set itself (through fragments), not their
    /// children.
    RootFields,
}

/// Sizes of selection sets with every fragment expanded, each fragment
/// computed once.
struct Expanded<'a> {
    doc: &'a ExecutableDocument,
    count: Count,
    /// `None` while a fragment is being computed: a cycle (validation
    /// reports it) adds nothing more.
    fragments: HashMap<&'a str, Option<usize>>,
}

impl<'a> Expanded<'a> {
    fn new(doc: &'a ExecutableDocument, count: Count) -> Self {
        Self { doc, count, fragments: HashMap::new() }
    }

    fn size(&mut self, set: &'a Positioned<SelectionSet>, nesting: usize) -> usize {
        if nesting > MAX_NESTING {
            return usize::MAX;
        }
        let mut size = 0usize;
        for item in &set.node.items {
            let n = match &item.node {
                Selection::Field(f) if self.count == Count::Fields => {
                    1usize.saturating_add(self.size(&f.node.selection_set, nesting + 1))
                }
                Selection::Field(_) => 1,
                Selection::InlineFragment(f) => self.size(&f.node.selection_set, nesting + 1),
                Selection::FragmentSpread(s) => {
                    self.fragment(s.node.fragment_name.node.as_str(), nesting + 1)
                }
            };
            size = size.saturating_add(n);
        }
        size
    }

    fn fragment(&mut self, name: &'a str, nesting: usize) -> usize {
        if let Some(known) = self.fragments.get(name) {
            return known.unwrap_or(0);
        }
        // An unknown fragment is validation's to report.
        let Some((key, fragment)) = self.doc.fragments.get_key_value(name) else { return 0 };
        self.fragments.insert(key.as_str(), None);
        let size = self.size(&fragment.node.selection_set, nesting);
        self.fragments.insert(key.as_str(), Some(size));
        size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Budget = Budget { max_fields: 5000, max_spreads: MAX_SPREADS, max_root_mutations: 10 };

    fn check_text(text: &str) -> Result<(), Refused> {
        check(&async_graphql::parser::parse_query(text).expect("parses"), &BUDGET)
    }

    /// `levels` fragments, each spreading the next twice: 2^levels fields.
    fn fan_out(levels: usize) -> String {
        let mut q = String::from("query{...F0}");
        for i in 0..levels {
            q += &format!(" fragment F{i} on Query{{products{{id}} ...F{} ...F{}}}", i + 1, i + 1);
        }
        q + &format!(" fragment F{levels} on Query{{products{{id}}}}")
    }

    #[test]
    fn a_fragment_fan_out_is_refused_at_once_by_its_expanded_size() {
        let started = std::time::Instant::now();
        let err = check_text(&fan_out(30)).expect_err("refused");
        assert!(err.0.contains("too large"), "{err:?}");
        // Linear in the text: a walk per spread would take minutes.
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Small fan-outs are ordinary documents.
        assert_eq!(check_text(&fan_out(5)), Ok(()));
    }

    #[test]
    fn the_expanded_size_counts_every_field_through_fragments() {
        let doc = async_graphql::parser::parse_query(
            "{ a { b c } ...F ... on Query { d } } fragment F on Query { e { f } ...G } fragment G on Query { g }",
        )
        .expect("parses");
        let mut fields = Expanded::new(&doc, Count::Fields);
        let (_, op) = doc.operations.iter().next().expect("op");
        assert_eq!(fields.size(&op.node.selection_set, 0), 7);
        let mut roots = Expanded::new(&doc, Count::RootFields);
        assert_eq!(roots.size(&op.node.selection_set, 0), 4);
    }

    #[test]
    fn fragment_cycles_and_unknown_fragments_are_left_to_validation() {
        assert_eq!(
            check_text("{ ...A } fragment A on Query { a ...B ...B } fragment B on Query { b ...A ...A }"),
            Ok(())
        );
        assert_eq!(check_text("{ ...Nowhere }"), Ok(()));
    }

    #[test]
    fn too_many_spreads_are_refused() {
        let q = format!("{{ {} }} fragment F on Query {{ a }}", "...F ".repeat(MAX_SPREADS + 1));
        assert!(check_text(&q).expect_err("refused").0.contains("fragment spreads"));
    }

    #[test]
    fn a_mutation_has_at_most_the_root_fields_allowed_aliases_and_fragments_included() {
        let logins = |n: usize| {
            (0..n)
                .map(|i| format!("l{i}: login(email: \"a\", password: \"b\") {{ token }}"))
                .collect::<String>()
        };
        assert_eq!(check_text(&format!("mutation {{ {} }}", logins(10))), Ok(()));
        let err = check_text(&format!("mutation {{ {} }}", logins(11))).expect_err("refused");
        assert!(err.0.contains("at most 10 root fields"), "{err:?}");
        let via_fragment = format!("mutation {{ ...M ...M }} fragment M on Mutation {{ {} }}", logins(6));
        assert!(check_text(&via_fragment).is_err());
        // Queries have no such limit.
        assert_eq!(check_text(&format!("{{ {} }}", "me { id } ".repeat(11).replace("me", "a: me"))), Ok(()));
    }
}
