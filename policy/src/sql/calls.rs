//! What one function call (`FuncCall`, anywhere in a statement) means for the tenant context.
//!
//! - a function that is not built in may read tenant tables: the statement needs a tenant;
//! - `set_config` can write the tenant setting, the role or the session authorization from any
//!   expression position, so every call is checked, with the setting name read from the tree
//!   (a name that is not a literal is refused: it could be any of those);
//! - a few built-ins run SQL given as text, which the proxy cannot check;
//! - session-level advisory locks outlive the transaction.
//!
//! The standalone `SELECT set_config('<tenant setting>', …)` never reaches this module: it is
//! recognized first (`tenant_command`) and answered by the proxy.

use super::builtins::is_builtin_function;
use super::forbidden::Forbidden;
use super::literal;
use super::tree::{Struct, Value};
use super::verdict::Rules;

/// Built-ins that execute SQL text (or read whole relations chosen at run time).
const DYNAMIC_SQL: [&str; 15] = [
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    // ts_stat(sqlquery text [, weights])
    "ts_stat",
];

/// Advisory locks held until the session ends (the `_xact_` variants end with the transaction).
const SESSION_ADVISORY_LOCKS: [&str; 4] = [
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// `set_config`'s parameters, for calls that name them.
const SET_CONFIG_PARAMS: [&str; 3] = ["setting_name", "new_value", "is_local"];

/// What a call contributes to its statement's verdict.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct CallEffects {
    pub(super) needs_tenant: bool,
    pub(super) forbidden: Option<Forbidden>,
    pub(super) session_state: bool,
}

/// Inspects one `FuncCall` node.
pub(super) fn inspect(call: &Struct, rules: &Rules) -> CallEffects {
    let parts = literal::name_parts(call.seq("funcname"));
    // `f`, `schema.f` or `catalog.schema.f`.
    let (schema, name) = match parts.as_slice() {
        [name] => (None, *name),
        [.., schema, name] => (Some(*schema), *name),
        [] => (None, ""),
    };
    let in_catalog = match schema {
        None => is_builtin_function(name),
        Some(schema) => schema == "pg_catalog",
    };
    let mut effects = CallEffects {
        needs_tenant: !in_catalog,
        ..CallEffects::default()
    };

    // Any function called set_config, built in or not: a user function of that name is most
    // likely a wrapper around the real one.
    if name == "set_config" {
        set_config(call, rules, &mut effects);
    }
    if in_catalog {
        if DYNAMIC_SQL.contains(&name) || (name == "ts_rewrite" && call.seq("args").len() == 2) {
            effects.forbidden.get_or_insert(Forbidden::DynamicSql);
        }
        if SESSION_ADVISORY_LOCKS.contains(&name) {
            effects.session_state = true;
        }
    }
    effects
}

/// The arguments of a `set_config` call by parameter position, whether passed by position or
/// by name. Unknown names are dropped (so the setting name reads as unknown).
fn set_config_args(call: &Struct) -> [Option<&Value>; 3] {
    let mut args = [None; 3];
    for (position, value) in call.seq("args").iter().enumerate() {
        match value.named("NamedArgExpr") {
            Some(named) => {
                let index = SET_CONFIG_PARAMS
                    .iter()
                    .position(|p| named.str("name").eq_ignore_ascii_case(p));
                if let (Some(slot), Some(arg)) =
                    (index.and_then(|i| args.get_mut(i)), named.get("arg"))
                {
                    *slot = Some(arg);
                }
            }
            None => {
                if let Some(slot) = args.get_mut(position) {
                    *slot = Some(value);
                }
            }
        }
    }
    args
}

fn set_config(call: &Struct, rules: &Rules, effects: &mut CallEffects) {
    let [setting, _value, is_local] = set_config_args(call);
    let Some(setting) = setting.and_then(literal::text) else {
        effects
            .forbidden
            .get_or_insert(Forbidden::DynamicSettingName);
        effects.session_state = true;
        return;
    };
    if let Some(reason) = setting_write(&setting, rules) {
        effects.forbidden.get_or_insert(reason);
    }
    let local = is_local
        .and_then(literal::arg)
        .and_then(|arg| arg.as_bool());
    if local != Some(true) {
        effects.session_state = true;
    }
}

/// Why writing the setting `name` (from anything but the standalone tenant forms) is refused.
pub(super) fn setting_write(name: &str, rules: &Rules) -> Option<Forbidden> {
    if rules.is_tenant_setting(name) {
        Some(Forbidden::TenantSettingWrite)
    } else if name.eq_ignore_ascii_case("role") {
        Some(Forbidden::SetRole)
    } else if name.eq_ignore_ascii_case("session_authorization") {
        Some(Forbidden::SessionAuthorization)
    } else if name.eq_ignore_ascii_case("standard_conforming_strings") {
        Some(Forbidden::StringSyntax)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::tree::{Value, to_tree};
    use super::*;

    /// The first `FuncCall` target of a `SELECT`.
    fn call(sql: &str) -> Value {
        let parsed = pg_query::parse(sql, 0).expect("parses");
        let tree = to_tree(&parsed.protobuf.stmts[0].stmt).expect("tree");
        let select = tree.named("SelectStmt").expect("select").clone();
        let target = select.seq("target_list")[0]
            .named("ResTarget")
            .expect("res");
        target.get("val").cloned().expect("val")
    }

    fn effects(sql: &str) -> CallEffects {
        let call = call(sql);
        inspect(call.named("FuncCall").expect("call"), &Rules::default())
    }

    #[test]
    fn named_arguments_are_placed_by_name() {
        let call =
            call("select set_config(is_local => true, setting_name => 'a.b', new_value => 'v')");
        let args = set_config_args(call.named("FuncCall").expect("call"));
        assert_eq!(args[0].and_then(literal::text).as_deref(), Some("a.b"));
        assert_eq!(args[1].and_then(literal::text).as_deref(), Some("v"));
        assert!(args[2].is_some());
        assert_eq!(
            effects("select set_config(new_value => 'v', setting_name => 'app.tenant_id', is_local => true)")
                .forbidden,
            Some(Forbidden::TenantSettingWrite)
        );
        // A name set_config does not have leaves the setting unknown.
        assert_eq!(
            effects(
                "select set_config(name => 'app.tenant_id', new_value => 'v', is_local => true)"
            )
            .forbidden,
            Some(Forbidden::DynamicSettingName)
        );
    }

    #[test]
    fn builtin_or_not() {
        assert!(!effects("select now()").needs_tenant);
        assert!(!effects("select pg_catalog.now()").needs_tenant);
        assert!(!effects("select pg_catalog.anything_at_all()").needs_tenant);
        assert!(effects("select my_func()").needs_tenant);
        assert!(effects("select public.now()").needs_tenant);
        assert!(effects("select db.public.now()").needs_tenant);
        assert!(effects("select \"NOW\"()").needs_tenant);
    }

    #[test]
    fn user_functions_of_a_dangerous_name_are_not_dynamic_sql() {
        // Only the built-in runs SQL text; a user function of that name needs a tenant instead.
        let user = effects("select myschema.query_to_xml('x', true, true, '')");
        assert_eq!((user.needs_tenant, user.forbidden), (true, None));
        let builtin = effects("select query_to_xml('x', true, true, '')");
        assert_eq!(builtin.forbidden, Some(Forbidden::DynamicSql));
    }
}
