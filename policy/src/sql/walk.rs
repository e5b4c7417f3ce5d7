//! The walk over every node of one statement: relations, function calls, refused statement
//! types, nested `SET` clauses, temporary objects.
//!
//! Fail closed by construction: the walk does not know statement shapes, it visits every node of
//! the generic [tree](super::tree) and reacts to node types, so a relation in a CTE, a subquery, a
//! join, `INSERT … SELECT`, `COPY (…) TO`, `EXPLAIN ANALYZE`, `DECLARE`, `CREATE TABLE AS`,
//! `CREATE VIEW`, `MERGE`, a `LATERAL` call or a `RETURNING` list is found the same way.
//!
//! The only structure it knows is `WITH`: a name defined by a CTE is not a relation inside the
//! statement that defines it (for a non-recursive `WITH`, only in the CTEs after it and the main
//! statement; for `WITH RECURSIVE`, in all of them). The target of `INSERT`/`UPDATE`/`DELETE`/
//! `MERGE` and of `SELECT … INTO` is always a relation, whatever CTEs are in scope, as in
//! Postgres.
//!
//! Iterative, with its own stack: no recursion, whatever the depth of the tree.

use pg_query::protobuf::ObjectType;

use super::calls;
use super::forbidden::Forbidden;
use super::literal;
use super::refuse::refused;
use super::tree::{Struct, Value};
use super::verdict::Rules;

/// What the walk found in one statement.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Facts {
    /// Relations as written (`schema.name` or `name`), in the order found, with repeats.
    pub(super) relations: Vec<String>,
    pub(super) needs_tenant: bool,
    /// The first refusal found.
    pub(super) forbidden: Option<Forbidden>,
    pub(super) session_state: bool,
    /// A `set_config` call (of any schema): its verdict depends on its constant arguments.
    pub(super) calls_set_config: bool,
}

/// Walks the statement whose top node is `root`.
pub(super) fn walk(root: &Struct, rules: &Rules) -> Facts {
    let mut walker = Walker {
        rules,
        root,
        scopes: Vec::new(),
        stack: Vec::new(),
        facts: Facts::default(),
    };
    walker.visit(root, None);
    walker.push_children(root, None);
    while let Some((value, scope)) = walker.stack.pop() {
        match value {
            Value::Struct(node) => {
                walker.visit(node, scope);
                walker.push_children(node, scope);
            }
            Value::Seq(items) => {
                walker
                    .stack
                    .extend(items.iter().rev().map(|item| (item, scope)));
            }
            _ => {}
        }
    }
    // Last, so a more specific reason (a SET clause of the tenant setting) is the one given.
    if root.name == "CreateFunctionStmt" && !rules.allow_functions {
        walker.forbid(Forbidden::FunctionDefinition);
    }
    walker.facts
}

/// CTE names visible at some point of the tree; scopes form a chain to the outermost.
struct Scope<'t> {
    parent: Option<usize>,
    names: Vec<&'t str>,
}

struct Walker<'t, 'r> {
    rules: &'r Rules,
    root: &'t Struct,
    /// Every scope created so far; a node refers to its innermost by index.
    scopes: Vec<Scope<'t>>,
    /// Nodes still to visit, each with its innermost CTE scope.
    stack: Vec<(&'t Value, Option<usize>)>,
    facts: Facts,
}

impl<'t> Walker<'t, '_> {
    fn visit(&mut self, node: &'t Struct, scope: Option<usize>) {
        match node.name {
            "RangeVar" => {
                let (schema, name) = (node.str("schemaname"), node.str("relname"));
                if !(schema.is_empty() && self.is_cte(scope, name)) {
                    self.relation(schema, name);
                }
                if node.str("relpersistence") == "t" {
                    self.facts.session_state = true;
                }
            }
            "FuncCall" => {
                if literal::name_parts(node.seq("funcname")).last() == Some(&"set_config") {
                    self.facts.calls_set_config = true;
                }
                let effects = calls::inspect(node, self.rules);
                self.facts.needs_tenant |= effects.needs_tenant;
                self.facts.session_state |= effects.session_state;
                if let Some(reason) = effects.forbidden {
                    self.forbid(reason);
                }
            }
            // `a OPERATOR(myschema.+) b`: a user operator runs a user function.
            "AExpr" => {
                if let [.., schema, _] = literal::name_parts(node.seq("name")).as_slice()
                    && *schema != "pg_catalog"
                {
                    self.facts.needs_tenant = true;
                }
            }
            // EXECUTE of a prepared statement: its text is not visible here.
            "ExecuteStmt" => self.facts.needs_tenant = true,
            "DropStmt" => self.dropped_relations(node),
            _ => {}
        }
        if creates_temp_object(node) {
            self.facts.session_state = true;
        }
        if let Some(reason) = refused(node, self.root, self.rules) {
            self.forbid(reason);
        }
    }

    fn forbid(&mut self, reason: Forbidden) {
        self.facts.forbidden.get_or_insert(reason);
    }

    /// A relation named `schema.name` (`schema` empty when unqualified).
    fn relation(&mut self, schema: &str, name: &str) {
        let written = if schema.is_empty() {
            name.to_owned()
        } else {
            format!("{schema}.{name}")
        };
        self.facts.relations.push(written);
        if !is_catalog_relation(schema, name) && !self.rules.is_global_table(schema, name) {
            self.facts.needs_tenant = true;
        }
    }

    /// `DROP TABLE|VIEW|MATERIALIZED VIEW|FOREIGN TABLE|SEQUENCE a, s.b`: names, not `RangeVar`s.
    fn dropped_relations(&mut self, drop: &'t Struct) {
        let remove_type = drop.int("remove_type");
        let is_relation = [
            ObjectType::ObjectTable,
            ObjectType::ObjectView,
            ObjectType::ObjectMatview,
            ObjectType::ObjectForeignTable,
            ObjectType::ObjectSequence,
        ]
        .iter()
        .any(|t| remove_type == i64::from(*t as i32));
        if !is_relation {
            return;
        }
        for object in drop.seq("objects") {
            let Some(list) = object.named("List") else {
                continue;
            };
            match literal::name_parts(list.seq("items")).as_slice() {
                [name] => self.relation("", name),
                [.., schema, name] => self.relation(schema, name),
                [] => {}
            }
        }
    }

    fn is_cte(&self, mut scope: Option<usize>, name: &str) -> bool {
        while let Some(s) = scope.and_then(|i| self.scopes.get(i)) {
            if s.names.contains(&name) {
                return true;
            }
            scope = s.parent;
        }
        false
    }

    fn new_scope(&mut self, parent: Option<usize>, names: Vec<&'t str>) -> Option<usize> {
        self.scopes.push(Scope { parent, names });
        Some(self.scopes.len() - 1)
    }

    /// Queues the children of `node`, with the CTE scope each one sees.
    fn push_children(&mut self, node: &'t Struct, scope: Option<usize>) {
        let with = node.child("with_clause").filter(|w| w.name == "WithClause");
        let body_scope = match with {
            Some(with) => self.push_ctes(with, scope),
            None => scope,
        };
        let dml = matches!(
            node.name,
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt"
        );
        for (field, value) in node.fields.iter().rev() {
            match *field {
                "with_clause" if with.is_some() => {}
                "relation" if dml => self.stack.push((value, None)),
                "into_clause" if node.name == "SelectStmt" => self.stack.push((value, None)),
                _ => self.stack.push((value, body_scope)),
            }
        }
    }

    /// Queues the CTEs of `with` (each in the scope it sees) and returns the scope of the
    /// statement body.
    fn push_ctes(&mut self, with: &'t Struct, outer: Option<usize>) -> Option<usize> {
        let ctes = with.seq("ctes");
        let names: Vec<&'t str> = ctes
            .iter()
            .filter_map(|c| c.named("CommonTableExpr"))
            .map(|c| c.str("ctename"))
            .collect();
        let body = self.new_scope(outer, names.clone());
        let recursive = with.bool("recursive");
        for (i, cte) in ctes.iter().enumerate().rev() {
            let scope = if recursive {
                body
            } else {
                let before = names.get(..i).unwrap_or_default().to_vec();
                self.new_scope(outer, before)
            };
            self.stack.push((cte, scope));
        }
        body
    }
}

/// `pg_catalog.x`, `information_schema.x`, or an unqualified `pg_…` name (`pg_catalog` is
/// searched first, and its relations are all named `pg_…`). A user table named `pg_…` is taken
/// for a catalog when unqualified: accepted, since RLS still applies to it in the database.
fn is_catalog_relation(schema: &str, name: &str) -> bool {
    match schema {
        "" => name.starts_with("pg_"),
        "pg_catalog" | "information_schema" => true,
        _ => false,
    }
}

/// `CREATE TEMP TABLE|VIEW|SEQUENCE`, `CREATE TEMP TABLE AS`, `SELECT … INTO TEMP`, and the same
/// or a function created in `pg_temp` explicitly.
fn creates_temp_object(node: &Struct) -> bool {
    let target = match node.name {
        "CreateStmt" => node.child("relation"),
        "ViewStmt" => node.child("view"),
        "CreateSeqStmt" => node.child("sequence"),
        "IntoClause" => node.child("rel"),
        "CreateFunctionStmt" => {
            let name = literal::name_parts(node.seq("funcname"));
            return matches!(name.as_slice(), [.., schema, _] if schema.starts_with("pg_temp"));
        }
        _ => None,
    };
    target.is_some_and(|rel| {
        rel.str("relpersistence") == "t" || rel.str("schemaname").starts_with("pg_temp")
    })
}

#[cfg(test)]
mod tests {
    use super::super::tree::to_tree;
    use super::*;

    fn facts(sql: &str) -> Facts {
        let parsed = pg_query::parse(sql, 0).expect("parses");
        let tree = to_tree(&parsed.protobuf.stmts[0].stmt).expect("tree");
        walk(tree.as_struct().expect("statement"), &Rules::default())
    }

    #[test]
    fn cte_scopes() {
        // Visible in the body and in later CTEs; the name in its own body is the table.
        assert_eq!(
            facts("WITH a AS (SELECT * FROM a), b AS (SELECT * FROM a) SELECT * FROM a, b")
                .relations,
            ["a"]
        );
        // A CTE in a subquery is not visible outside it.
        assert_eq!(
            facts("SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) s JOIN x ON true")
                .relations,
            ["x"]
        );
        // Recursive: visible in its own body.
        assert!(
            facts("WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT * FROM r) SELECT * FROM r")
                .relations
                .is_empty()
        );
        // Inner WITH shadows nothing it does not define.
        assert!(
            facts(
                "WITH x AS (SELECT 1) SELECT * FROM (WITH y AS (SELECT * FROM x) SELECT * FROM y) s"
            )
            .relations
            .is_empty()
        );
    }

    #[test]
    fn catalog_names() {
        assert!(is_catalog_relation("", "pg_class"));
        assert!(is_catalog_relation("pg_catalog", "anything"));
        assert!(is_catalog_relation("information_schema", "tables"));
        assert!(!is_catalog_relation("", "tables"));
        assert!(!is_catalog_relation("public", "pg_class"));
        assert!(!is_catalog_relation("PG_CATALOG", "pg_class"));
    }

    #[test]
    fn many_siblings_and_deep_lists_are_walked_without_recursion() {
        let sql = format!(
            "SELECT * FROM {}",
            (0..5000)
                .map(|i| format!("t{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let f = facts(&sql);
        assert_eq!(f.relations.len(), 5000);
        assert!(f.needs_tenant);
    }
}
