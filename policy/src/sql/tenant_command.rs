//! The standalone statements that set the tenant, which the proxy answers itself instead of
//! forwarding: `SET [SESSION|LOCAL] <tenant setting> …`, `RESET <tenant setting>`, and
//! `SELECT [pg_catalog.]set_config('<tenant setting>', <value>, <is_local>) [[AS] alias]` with
//! nothing else in the statement.
//!
//! Anything that merely resembles these (a second target, a `FROM`, a `LIMIT`, an expression as
//! the value) is not a tenant command: the walker then finds the `set_config` and refuses it.

use pg_query::protobuf::{CoercionForm, LimitOption, SetOperation, VariableSetKind};

use super::forbidden::Forbidden;
use super::literal;
use super::tree::{Struct, Value};
use super::verdict::{Arg, Rules, TenantCommand};

/// `Some(Ok(command))` for a tenant command, `Some(Err(reason))` for a `SET`/`RESET` of the
/// tenant setting in a form the proxy will not take, `None` when `stmt` is neither.
pub(super) fn recognize(stmt: &Struct, rules: &Rules) -> Option<Result<TenantCommand, Forbidden>> {
    match stmt.name {
        "VariableSetStmt" if rules.is_tenant_setting(stmt.str("name")) => Some(variable_set(stmt)),
        "SelectStmt" => standalone_set_config(stmt, rules).map(Ok),
        _ => None,
    }
}

fn variable_set(stmt: &Struct) -> Result<TenantCommand, Forbidden> {
    let kind = stmt.int("kind");
    let is = |k: VariableSetKind| kind == i64::from(k as i32);
    let local = stmt.bool("is_local");
    if is(VariableSetKind::VarSetValue) {
        // Postgres refuses more than one value for a custom setting.
        match stmt.seq("args") {
            [value] => literal::set_value(value)
                .map(|value| TenantCommand::Set { local, value })
                .ok_or(Forbidden::TenantSettingWrite),
            _ => Err(Forbidden::TenantSettingWrite),
        }
    } else if is(VariableSetKind::VarSetDefault) {
        Ok(TenantCommand::Reset { local })
    } else if is(VariableSetKind::VarReset) {
        Ok(TenantCommand::Reset { local: false })
    } else {
        // SET … FROM CURRENT and anything newer.
        Err(Forbidden::TenantSettingWrite)
    }
}

fn standalone_set_config(select: &Struct, rules: &Rules) -> Option<TenantCommand> {
    let [target] = select.seq("target_list") else {
        return None;
    };
    if !only_fields(
        select,
        &[
            ("target_list", None),
            ("op", Some(SetOperation::SetopNone as i32)),
            ("limit_option", Some(LimitOption::Default as i32)),
        ],
    ) {
        return None;
    }
    let target = target.named("ResTarget")?;
    if !target.seq("indirection").is_empty() {
        return None;
    }
    let call = target.get("val")?.named("FuncCall")?;
    if !only_fields(
        call,
        &[
            ("funcname", None),
            ("args", None),
            ("funcformat", Some(CoercionForm::CoerceExplicitCall as i32)),
            ("location", None),
        ],
    ) {
        return None;
    }
    let name = literal::name_parts(call.seq("funcname"));
    if !matches!(
        name.as_slice(),
        ["set_config"] | ["pg_catalog", "set_config"]
    ) {
        return None;
    }
    let [setting, value, is_local] = call.seq("args") else {
        return None;
    };
    if !rules.is_tenant_setting(&literal::text(setting)?) {
        return None;
    }
    let value = literal::arg(value).filter(|v| !matches!(v, Arg::Bool(_)))?;
    let is_local = literal::arg(is_local)?;
    let column = match target.str("name") {
        "" => "set_config".to_owned(),
        alias => alias.to_owned(),
    };
    Some(TenantCommand::SetConfig {
        value,
        is_local,
        column,
    })
}

/// True when every field of `node` other than the listed ones is empty (unset, `""`, `0`,
/// `false`, no items), and each listed field with `Some(v)` holds `v` (or is unset). Fields this
/// code has never heard of count too, so a newer parser's additions make the form not match
/// rather than slip through.
fn only_fields(node: &Struct, allowed: &[(&str, Option<i32>)]) -> bool {
    node.fields.iter().all(|(name, value)| {
        match allowed.iter().find(|(allowed, _)| allowed == name) {
            Some((_, None)) => true,
            Some((_, Some(expected))) => {
                matches!(value, Value::Int(v) if *v == i64::from(*expected) || *v == 0)
            }
            None => is_empty(name, value),
        }
    })
}

fn is_empty(field: &str, value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Int(i) => *i == 0 || field == "location",
        Value::Float(f) => *f == 0.0,
        Value::Str(s) => s.is_empty(),
        Value::Seq(items) => items.is_empty(),
        Value::Struct(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(fields: Vec<(&'static str, Value)>) -> Struct {
        Struct { name: "X", fields }
    }

    #[test]
    fn only_fields_refuses_anything_unexpected() {
        let allowed = [("a", None), ("op", Some(1))];
        assert!(only_fields(
            &node(vec![("a", Value::Str("x".into())), ("op", Value::Int(1))]),
            &allowed
        ));
        assert!(only_fields(
            &node(vec![("b", Value::Seq(vec![])), ("location", Value::Int(7))]),
            &allowed
        ));
        assert!(!only_fields(&node(vec![("op", Value::Int(2))]), &allowed));
        assert!(!only_fields(
            &node(vec![("b", Value::Bool(true))]),
            &allowed
        ));
        assert!(!only_fields(&node(vec![("b", Value::Int(3))]), &allowed));
        assert!(!only_fields(
            &node(vec![("b", Value::Seq(vec![Value::Null]))]),
            &allowed
        ));
        assert!(!only_fields(
            &node(vec![("new_field", Value::Struct(Box::new(node(vec![]))))]),
            &allowed
        ));
    }
}
