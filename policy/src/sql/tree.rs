//! A generic copy of a `pg_query` parse tree, so one walker can visit every node of every type.
//!
//! Why: the protobuf AST has about 270 node types, and a hand-written walk over them (or
//! `pg_query`'s own `nodes()`, which covers a subset) silently misses whatever it forgets — a
//! `RETURNING` list, a `LATERAL` function, a `MERGE` action. Every generated protobuf type derives
//! `serde::Serialize`, so a small [`serde::Serializer`] turns any of them into a [`Value`] tree
//! that keeps each message's type name (`"RangeVar"`, `"FuncCall"`, …) and field names. Nothing
//! can be left out, because nothing is listed.
//!
//! The `Node` wrapper and `oneof` variants are made transparent: a `Node` holding a `RangeVar` is
//! just the `RangeVar` struct, wherever it sits.
//!
//! Depth: `prost` refuses to decode messages nested more than 100 deep, so a tree that reached
//! here is shallow enough for the recursive `Serialize` impls; the walker over it uses its own
//! stack anyway.

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible};

/// One value of the parse tree.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Value>),
    Struct(Box<Struct>),
}

/// A protobuf message: its type name and its fields in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Struct {
    pub(super) name: &'static str,
    pub(super) fields: Vec<(&'static str, Value)>,
}

impl Value {
    /// The message, if this is one.
    pub(super) fn as_struct(&self) -> Option<&Struct> {
        match self {
            Value::Struct(s) => Some(s),
            _ => None,
        }
    }

    /// The message, if this is one of type `name`.
    pub(super) fn named(&self, name: &str) -> Option<&Struct> {
        self.as_struct().filter(|s| s.name == name)
    }
}

impl Struct {
    /// A field's value; `None` when the message has no such field.
    pub(super) fn get(&self, field: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find_map(|(name, value)| (*name == field).then_some(value))
    }

    /// A string field, `""` when absent (protobuf's default).
    pub(super) fn str(&self, field: &str) -> &str {
        match self.get(field) {
            Some(Value::Str(s)) => s,
            _ => "",
        }
    }

    /// An integer or enum field, `0` when absent (protobuf's default).
    pub(super) fn int(&self, field: &str) -> i64 {
        match self.get(field) {
            Some(Value::Int(i)) => *i,
            _ => 0,
        }
    }

    /// A boolean field, `false` when absent (protobuf's default).
    pub(super) fn bool(&self, field: &str) -> bool {
        matches!(self.get(field), Some(Value::Bool(true)))
    }

    /// A repeated field, empty when absent.
    pub(super) fn seq(&self, field: &str) -> &[Value] {
        match self.get(field) {
            Some(Value::Seq(items)) => items,
            _ => &[],
        }
    }

    /// A message field, `None` when unset.
    pub(super) fn child(&self, field: &str) -> Option<&Struct> {
        self.get(field).and_then(Value::as_struct)
    }
}

/// Copies any serializable protobuf value into a [`Value`] tree.
pub(super) fn to_tree<T: Serialize + ?Sized>(value: &T) -> Result<Value, TreeError> {
    value.serialize(Builder)
}

/// Building the tree failed. Cannot happen with `pg_query`'s types (they only hold plain data);
/// kept as an error so an unexpected shape is refused rather than a panic.
#[derive(Debug)]
pub(super) struct TreeError(String);

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TreeError {}

impl ser::Error for TreeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TreeError(msg.to_string())
    }
}

/// The serializer: each call returns the [`Value`] for what it was given.
struct Builder;

/// Collects the items of a sequence or tuple.
struct SeqBuilder(Vec<Value>);

/// Collects the fields of a struct.
struct StructBuilder(Struct);

fn int<T: TryInto<i64>>(v: T) -> Result<Value, TreeError> {
    v.try_into()
        .map(Value::Int)
        .map_err(|_| TreeError("integer out of range".to_owned()))
}

impl ser::Serializer for Builder {
    type Ok = Value;
    type Error = TreeError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = SeqBuilder;
    type SerializeMap = Impossible<Value, TreeError>;
    type SerializeStruct = StructBuilder;
    type SerializeStructVariant = StructBuilder;

    fn serialize_bool(self, v: bool) -> Result<Value, TreeError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, TreeError> {
        int(v)
    }
    fn serialize_i16(self, v: i16) -> Result<Value, TreeError> {
        int(v)
    }
    fn serialize_i32(self, v: i32) -> Result<Value, TreeError> {
        int(v)
    }
    fn serialize_i64(self, v: i64) -> Result<Value, TreeError> {
        int(v)
    }
    fn serialize_u8(self, v: u8) -> Result<Value, TreeError> {
        int(v)
    }
    fn serialize_u16(self, v: u16) -> Result<Value, TreeError> {
        int(v)
    }
    fn serialize_u32(self, v: u32) -> Result<Value, TreeError> {
        int(v)
    }
    fn serialize_u64(self, v: u64) -> Result<Value, TreeError> {
        int(v)
    }
    fn serialize_f32(self, v: f32) -> Result<Value, TreeError> {
        Ok(Value::Float(f64::from(v)))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, TreeError> {
        Ok(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, TreeError> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, TreeError> {
        Ok(Value::Str(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, TreeError> {
        Ok(Value::Seq(
            v.iter().map(|b| Value::Int(i64::from(*b))).collect(),
        ))
    }
    fn serialize_none(self) -> Result<Value, TreeError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, TreeError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, TreeError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, TreeError> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
    ) -> Result<Value, TreeError> {
        int(index)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Value, TreeError> {
        value.serialize(self)
    }
    /// A `oneof` case (`Node::RangeVar(..)`, `a_const::Val::Sval(..)`): the case's message,
    /// which carries its own type name.
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<Value, TreeError> {
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, TreeError> {
        Ok(SeqBuilder(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, TreeError> {
        Ok(SeqBuilder(Vec::with_capacity(len)))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, TreeError> {
        Ok(SeqBuilder(Vec::with_capacity(len)))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, TreeError> {
        Ok(SeqBuilder(Vec::with_capacity(len)))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, TreeError> {
        Err(TreeError("unexpected map in parse tree".to_owned()))
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<StructBuilder, TreeError> {
        Ok(StructBuilder(Struct {
            name,
            fields: Vec::with_capacity(len),
        }))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<StructBuilder, TreeError> {
        self.serialize_struct(variant, len)
    }
}

impl SeqBuilder {
    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        self.0.push(value.serialize(Builder)?);
        Ok(())
    }
}

impl ser::SerializeSeq for SeqBuilder {
    type Ok = Value;
    type Error = TreeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, TreeError> {
        Ok(Value::Seq(self.0))
    }
}

impl ser::SerializeTuple for SeqBuilder {
    type Ok = Value;
    type Error = TreeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, TreeError> {
        Ok(Value::Seq(self.0))
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Value;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, TreeError> {
        Ok(Value::Seq(self.0))
    }
}

impl ser::SerializeTupleVariant for SeqBuilder {
    type Ok = Value;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, TreeError> {
        Ok(Value::Seq(self.0))
    }
}

impl StructBuilder {
    fn push<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), TreeError> {
        self.0.fields.push((key, value.serialize(Builder)?));
        Ok(())
    }

    /// `Node { node: Some(x) }` becomes `x`, `Node { node: None }` becomes `Null`.
    fn finish(self) -> Value {
        let mut s = self.0;
        if s.name == "Node"
            && s.fields.len() == 1
            && let Some((_, inner)) = s.fields.pop()
        {
            return inner;
        }
        Value::Struct(Box::new(s))
    }
}

impl ser::SerializeStruct for StructBuilder {
    type Ok = Value;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), TreeError> {
        self.push(key, value)
    }
    fn end(self) -> Result<Value, TreeError> {
        Ok(self.finish())
    }
}

impl ser::SerializeStructVariant for StructBuilder {
    type Ok = Value;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), TreeError> {
        self.push(key, value)
    }
    fn end(self) -> Result<Value, TreeError> {
        Ok(self.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(sql: &str) -> Value {
        let parsed = pg_query::parse(sql, 0).expect("parses");
        let raw = parsed.protobuf.stmts.first().expect("one statement");
        to_tree(&raw.stmt).expect("tree")
    }

    #[test]
    fn keeps_type_and_field_names_and_drops_node_wrappers() {
        let tree = stmt("select a from s.t");
        let select = tree.named("SelectStmt").expect("SelectStmt");
        let from = select.seq("from_clause");
        let range_var = from[0].named("RangeVar").expect("RangeVar");
        assert_eq!(range_var.str("schemaname"), "s");
        assert_eq!(range_var.str("relname"), "t");
        assert_eq!(range_var.str("no_such_field"), "");
    }

    #[test]
    fn direct_message_fields_keep_their_type_name() {
        // InsertStmt.relation is a RangeVar field, not a Node.
        let tree = stmt("insert into t values (1)");
        let insert = tree.named("InsertStmt").expect("InsertStmt");
        assert_eq!(insert.child("relation").map(|r| r.name), Some("RangeVar"));
    }

    #[test]
    fn constants_are_typed() {
        let tree = stmt("select 'x', 7, true, null");
        let select = tree.named("SelectStmt").expect("SelectStmt");
        let values: Vec<_> = select
            .seq("target_list")
            .iter()
            .filter_map(|t| t.as_struct()?.child("val"))
            .collect();
        assert_eq!(values.len(), 4);
        assert_eq!(values[0].child("val").map(|v| v.name), Some("String"));
        assert_eq!(values[1].child("val").map(|v| v.int("ival")), Some(7));
        assert_eq!(
            values[2].child("val").map(|v| v.bool("boolval")),
            Some(true)
        );
        assert!(values[3].bool("isnull"));
    }
}
