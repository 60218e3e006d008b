//! The rules for names that become store keys (collections, document ids, UIDs,
//! schedule titles): Firestore's, so that data moves between the backends unchanged.

/// Why a name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct NameError {
    pub what: &'static str,
    /// The name, cut to 80 characters.
    pub value: String,
    pub reason: &'static str,
}

/// Checks `value`, named `what` in the error, against Firestore's rules for ids.
pub fn check_name(what: &'static str, value: &str) -> Result<(), NameError> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.contains('/') {
        Some("must not contain '/'")
    } else if value == "." || value == ".." {
        Some("must not be . or ..")
    } else if value.len() > 1500 {
        Some("must be at most 1500 bytes")
    } else if value.starts_with("__") && value.ends_with("__") {
        Some("must not have the reserved form __name__")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NameError { what, value: value.chars().take(80).collect(), reason }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_firestore_rules() {
        check_name("id", "eAMHGLmiBGO76PIQ54O9CpsqTb23").unwrap();
        check_name("id", "아침 모드").unwrap();
        for bad in ["", "a/b", ".", "..", "__id__"] {
            assert!(check_name("id", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("id", &"x".repeat(1501)).is_err());
    }
}
