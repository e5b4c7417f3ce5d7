//! Reading constants out of the parse tree: what `set_config` is called with, and the value of
//! a `SET`.
//!
//! Only forms whose meaning is certain before the statement runs count as constants; anything
//! else (an expression, a column, a function call, a cast to another type) is `None`, and the
//! callers treat `None` as "unknown", never as "harmless".

use super::tree::{Struct, Value};
use super::verdict::Arg;

/// A `set_config` argument: a string or boolean literal, `NULL`, `$n`, or one of those cast to
/// `text`, `varchar` or `bool`. Numbers are `None`: `set_config(text, text, bool)` takes none.
pub(super) fn arg(value: &Value) -> Option<Arg> {
    let node = value.as_struct()?;
    match node.name {
        "AConst" => {
            if node.bool("isnull") {
                return Some(Arg::Null);
            }
            let val = node.child("val")?;
            match val.name {
                "String" => Some(Arg::Text(val.str("sval").to_owned())),
                "Boolean" => Some(Arg::Bool(val.bool("boolval"))),
                _ => None,
            }
        }
        "ParamRef" => u16::try_from(node.int("number"))
            .ok()
            .filter(|n| *n > 0)
            .map(Arg::Param),
        "TypeCast" if is_plain_cast(node) => arg(node.get("arg")?),
        _ => None,
    }
}

/// The text of a string-literal argument (possibly cast to `text`/`varchar`).
pub(super) fn text(value: &Value) -> Option<String> {
    match arg(value)? {
        Arg::Text(text) => Some(text),
        _ => None,
    }
}

/// A cast to `text`, `varchar` or `bool` (bare or `pg_catalog.`), not an array: the only casts
/// that leave a `set_config` argument's meaning as written.
fn is_plain_cast(cast: &Struct) -> bool {
    let Some(type_name) = cast.child("type_name") else {
        return false;
    };
    if !type_name.seq("array_bounds").is_empty() || type_name.bool("setof") {
        return false;
    }
    let names: Vec<&str> = type_name.seq("names").iter().filter_map(string).collect();
    let base = match names.as_slice() {
        [name] => *name,
        ["pg_catalog", name] => *name,
        _ => return false,
    };
    matches!(base, "text" | "varchar" | "bool")
}

/// The value of a `String` node (identifiers and name parts in the tree).
pub(super) fn string(value: &Value) -> Option<&str> {
    value.named("String").map(|s| s.str("sval"))
}

/// The value of one `SET` argument as Postgres writes it back: a string or identifier as it is,
/// an integer or numeric literal as its digits (`42`, `-1.5`). `None` for anything else.
pub(super) fn set_value(value: &Value) -> Option<String> {
    let node = value.named("AConst")?;
    if node.bool("isnull") {
        return None;
    }
    let val = node.child("val")?;
    match val.name {
        "String" => Some(val.str("sval").to_owned()),
        "Integer" => Some(val.int("ival").to_string()),
        "Float" => Some(val.str("fval").to_owned()),
        _ => None,
    }
}

/// A qualified name (`funcname`, operator `name`, …) as its parts.
pub(super) fn name_parts(values: &[Value]) -> Vec<&str> {
    values.iter().filter_map(string).collect()
}

#[cfg(test)]
mod tests {
    use super::super::tree::to_tree;
    use super::*;

    /// The first target of `select <expr>`.
    fn target(sql: &str) -> Value {
        let parsed = pg_query::parse(sql, 0).expect("parses");
        let tree = to_tree(&parsed.protobuf.stmts[0].stmt).expect("tree");
        let select = tree.named("SelectStmt").expect("select");
        let res = select.seq("target_list")[0]
            .named("ResTarget")
            .expect("res");
        res.get("val").cloned().expect("val")
    }

    #[test]
    fn set_config_args() {
        assert_eq!(arg(&target("select 'a'")), Some(Arg::Text("a".into())));
        assert_eq!(
            arg(&target("select E'a\\'b'")),
            Some(Arg::Text("a'b".into()))
        );
        assert_eq!(
            arg(&target("select 'a'::text")),
            Some(Arg::Text("a".into()))
        );
        assert_eq!(
            arg(&target("select 'a'::pg_catalog.varchar")),
            Some(Arg::Text("a".into()))
        );
        assert_eq!(arg(&target("select true")), Some(Arg::Bool(true)));
        assert_eq!(
            arg(&target("select false::boolean")),
            Some(Arg::Bool(false))
        );
        assert_eq!(arg(&target("select null")), Some(Arg::Null));
        assert_eq!(arg(&target("select $3")), Some(Arg::Param(3)));
        assert_eq!(arg(&target("select $2::text")), Some(Arg::Param(2)));
        assert_eq!(arg(&target("select 42")), None);
        assert_eq!(arg(&target("select 'a'::regclass")), None);
        assert_eq!(arg(&target("select 'a'::text[]")), None);
        assert_eq!(arg(&target("select 'a' || 'b'")), None);
        assert_eq!(arg(&target("select lower('a')")), None);
        assert_eq!(arg(&target("select x")), None);
        assert_eq!(text(&target("select true")), None);
    }
}
