//! SQL identifiers and literals that are safe to splice into DDL.
//!
//! DDL statements (`CREATE ROLE`, `CREATE DATABASE`, ...) cannot take bind
//! parameters for names, so names are validated against a strict pattern
//! *and* double-quoted. Nothing else from a ChatTenant reaches SQL text.

use std::fmt;

/// A validated PostgreSQL identifier: `^[a-z_][a-z0-9_]{0,62}$`, not reserved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ident(String);

/// Why a name cannot be an identifier.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentError {
    /// Empty or longer than 63 bytes.
    #[error("{0:?} must be 1 to 63 characters long")]
    Length(String),
    /// A character outside `[a-z0-9_]`, or a leading digit.
    #[error(
        "{0:?} may contain only lowercase letters, digits and '_', and must not start with a digit"
    )]
    Charset(String),
    /// A name PostgreSQL reserves.
    #[error("{0:?} is reserved by PostgreSQL")]
    Reserved(String),
}

impl Ident {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, IdentError> {
        if name.is_empty() || name.len() > 63 {
            return Err(IdentError::Length(name.to_string()));
        }
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !first_ok || !rest_ok {
            return Err(IdentError::Charset(name.to_string()));
        }
        if matches!(name, "postgres" | "template0" | "template1" | "public")
            || name.starts_with("pg_")
        {
            return Err(IdentError::Reserved(name.to_string()));
        }
        Ok(Self(name.to_string()))
    }

    /// The bare name, for bind parameters and catalog lookups.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The double-quoted form for SQL text.
    pub fn quoted(&self) -> String {
        // The charset excludes '"', so no escaping is needed; quoting keeps
        // keywords (for example `user`) usable as names.
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A single-quoted SQL string literal, doubling embedded quotes. Used only for
/// SCRAM verifiers, which the operator computes itself.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        assert_eq!(Ident::new("chat_acme").unwrap().quoted(), "\"chat_acme\"");
        assert_eq!(Ident::new("_x1").unwrap().as_str(), "_x1");
        assert!(Ident::new(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn refuses_anything_that_could_escape_quoting() {
        for bad in [
            "", "Acme", "a-b", "a\"b", "a;drop", "a b", "1abc", "é", "a'b",
        ] {
            assert!(Ident::new(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(matches!(
            Ident::new(&"a".repeat(64)),
            Err(IdentError::Length(_))
        ));
    }

    #[test]
    fn refuses_reserved_names() {
        for bad in ["postgres", "template0", "template1", "pg_signal", "public"] {
            assert!(matches!(Ident::new(bad), Err(IdentError::Reserved(_))));
        }
    }

    #[test]
    fn literals_double_quotes() {
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }
}
