//! What an API key may run. Checked once per operation on its root fields,
//! before anything executes (a refused operation does nothing at all), from
//! one table: a root field not named here is for the account holder only,
//! so a new mutation is closed to keys until it is classified.

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use mage_domain::api_keys::Scope;

/// A set of [`Scope`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

const fn bit(scope: Scope) -> u8 {
    match scope {
        Scope::Read => 1,
        Scope::Generate => 2,
        Scope::Billing => 4,
    }
}

impl Scopes {
    pub fn of(scopes: &[Scope]) -> Self {
        Self(scopes.iter().fold(0, |acc, s| acc | bit(*s)))
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & bit(scope) != 0
    }
}

/// What a root field asks of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Scope(Scope),
    /// Keys, sessions, passwords, the account, admin work: never a key.
    AccountHolder,
}

/// Mutations a `GENERATE` key may run.
pub const GENERATE_MUTATIONS: &[&str] = &[
    "createGeneration",
    "cancelGeneration",
    "retryGeneration",
    "deleteGeneration",
    "createUpload",
    "completeUpload",
    "deleteAsset",
];
/// Mutations a `BILLING` key may run.
pub const BILLING_MUTATIONS: &[&str] = &["createCheckout"];
/// Queries no key may run, whatever its scopes: the account's credentials
/// and the admins' views. (Admin mutations, `createModel` and the like,
/// are in no list above: closed to keys.)
pub const ACCOUNT_QUERIES: &[&str] = &[
    "sessions",
    "apiKeys",
    "users",
    "stripeEvents",
    "deadJobs",
    "dailyStats",
    "catalogModels",
    "catalogProducts",
];

pub fn needs(operation: OperationType, field: &str) -> Needs {
    match operation {
        OperationType::Query if ACCOUNT_QUERIES.contains(&field) => Needs::AccountHolder,
        OperationType::Query | OperationType::Subscription => Needs::Scope(Scope::Read),
        OperationType::Mutation if GENERATE_MUTATIONS.contains(&field) => Needs::Scope(Scope::Generate),
        OperationType::Mutation if BILLING_MUTATIONS.contains(&field) => Needs::Scope(Scope::Billing),
        OperationType::Mutation => Needs::AccountHolder,
    }
}

/// Why a key with `scopes` may not run the operation `name` of `doc`;
/// `None` when it may (or when there is no such operation: execution
/// answers that).
pub fn refusal(doc: &ExecutableDocument, name: Option<&str>, scopes: Scopes) -> Option<String> {
    let op = match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name)?,
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next()?,
        (DocumentOperations::Multiple(_), None) => return None,
    };
    let kind = op.node.ty;
    let mut fields = Vec::new();
    root_fields(doc, &op.node.selection_set.node, &mut fields, 0);
    fields.into_iter().find_map(|field| match needs(kind, field) {
        Needs::Scope(scope) if scopes.contains(scope) => None,
        Needs::Scope(scope) => Some(format!(
            "this API key lacks the {} scope that `{field}` needs",
            scope.as_str().to_ascii_uppercase()
        )),
        Needs::AccountHolder => {
            Some(format!("`{field}` is for the account holder: an API key can never run it"))
        }
    })
}

/// The root field names of a selection set, through fragments (bounded
/// depth: validation refuses cycles later, this must not loop before it).
fn root_fields<'a>(doc: &'a ExecutableDocument, set: &'a SelectionSet, out: &mut Vec<&'a str>, depth: usize) {
    if depth > 16 {
        return;
    }
    for item in &set.items {
        match &item.node {
            Selection::Field(f) => {
                let name = f.node.name.node.as_str();
                if !name.starts_with("__") {
                    out.push(name);
                }
            }
            Selection::FragmentSpread(s) => {
                if let Some(fragment) = doc.fragments.get(&s.node.fragment_name.node) {
                    root_fields(doc, &fragment.node.selection_set.node, out, depth + 1);
                }
            }
            Selection::InlineFragment(i) => root_fields(doc, &i.node.selection_set.node, out, depth + 1),
        }
    }
}
