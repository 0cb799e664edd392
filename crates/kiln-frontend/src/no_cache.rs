//! `kiln build --no-cache-filter STAGE`: which stages run without the cache.

/// Whether a stage is named by the filter: by name, case-insensitively, as BuildKit compares
/// them; an unnamed stage never is.
pub(crate) fn filtered(filter: &[String], stage: Option<&str>) -> bool {
    stage.is_some_and(|name| filter.iter().any(|f| f.eq_ignore_ascii_case(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_case_insensitively() {
        let filter = vec!["Build".to_string(), "test".to_string()];
        assert!(filtered(&filter, Some("build")));
        assert!(filtered(&filter, Some("test")));
        assert!(!filtered(&filter, Some("base")));
        assert!(!filtered(&filter, None));
        assert!(!filtered(&[], Some("build")));
    }
}
