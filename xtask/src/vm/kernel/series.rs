//! Which Debian package is "the newest kernel of a series": picked from apt's package names.
use std::cmp::Ordering;

/// Whether `name` is an image of `series` and `flavour`: `linux-image-SERIES` followed by `.N`
/// or `-N` and `-FLAVOUR`, with no other word between (no `-unsigned`, `-dbg`, `-rt`); so `6.1`
/// takes `6.1.0-56` but not `6.12.117+deb12`, nor the meta package `linux-image-6.12-cloud-amd64`.
pub fn in_series(name: &str, series: &str, flavour: &str) -> bool {
    let Some(middle) = name
        .strip_prefix("linux-image-")
        .and_then(|n| n.strip_prefix(series))
        .and_then(|n| n.strip_suffix(flavour))
        .and_then(|n| n.strip_suffix('-'))
    else {
        return false;
    };
    let mut chars = middle.chars();
    matches!(chars.next(), Some('.' | '-'))
        && chars.next().is_some_and(|c| c.is_ascii_digit())
        && middle
            .match_indices('-')
            .all(|(i, _)| middle[i + 1..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Orders names as `sort -V` does: runs of digits compare as numbers.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, c) in s.char_indices().skip(1) {
            let prev = s[..i]
                .chars()
                .next_back()
                .is_some_and(|p| p.is_ascii_digit());
            if prev != c.is_ascii_digit() {
                out.push((prev, &s[start..i]));
                start = i;
            }
        }
        if !s.is_empty() {
            out.push((
                s[start..].starts_with(|c: char| c.is_ascii_digit()),
                &s[start..],
            ));
        }
        out
    }
    for (x, y) in chunks(a).into_iter().zip(chunks(b)) {
        let order = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then(x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_match_only_their_own_images() {
        let flavour = "cloud-amd64";
        assert!(in_series(
            "linux-image-6.1.0-56-cloud-amd64",
            "6.1",
            flavour
        ));
        assert!(in_series(
            "linux-image-6.12.117+deb12-cloud-amd64",
            "6.12",
            flavour
        ));
        assert!(in_series(
            "linux-image-7.2.13+deb14-cloud-amd64",
            "7.2",
            flavour
        ));
        assert!(in_series(
            "linux-image-5.10.0-46-cloud-amd64",
            "5.10",
            flavour
        ));
        assert!(!in_series(
            "linux-image-6.12.117+deb12-cloud-amd64",
            "6.1",
            flavour
        ));
        assert!(!in_series("linux-image-6.12-cloud-amd64", "6.12", flavour));
        assert!(!in_series(
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
            "6.1",
            flavour
        ));
        assert!(!in_series(
            "linux-image-6.1.0-56-cloud-amd64-dbg",
            "6.1",
            flavour
        ));
        assert!(!in_series("linux-image-6.1.0-56-rt-amd64", "6.1", "amd64"));
        assert!(in_series("linux-image-6.1.0-56-amd64", "6.1", "amd64"));
    }

    #[test]
    fn versions_sort_numerically() {
        let mut names = [
            "linux-image-5.10.0-9-cloud-amd64",
            "linux-image-5.10.0-46-cloud-amd64",
            "linux-image-5.10.0-32-cloud-amd64",
        ];
        names.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(names.last(), Some(&"linux-image-5.10.0-46-cloud-amd64"));
        assert_eq!(
            version_cmp("6.12.117+deb12", "6.12.99+deb12"),
            Ordering::Greater
        );
        assert_eq!(version_cmp("6.12.117", "6.12.117"), Ordering::Equal);
    }
}
