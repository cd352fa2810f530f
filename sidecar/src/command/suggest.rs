//! "Did you mean": the reserved word a mistyped command word is closest to.

use super::Verb;

/// The reserved word `word` is a likely misspelling of: within edit distance
/// 1 (words of up to 4 letters) or 2 (longer ones), counting a swap of two
/// neighbouring letters as one edit, and ignoring case (`Status` means
/// `status`). Ties go to the first in [`Verb::ALL`].
pub fn closest(word: &str) -> Option<Verb> {
    let word = word.to_lowercase();
    let allowed = |len: usize| if len <= 4 { 1 } else { 2 };
    Verb::ALL
        .into_iter()
        .map(|verb| (distance(&word, verb.as_str()), verb))
        .filter(|&(d, verb)| d <= allowed(word.chars().count().min(verb.as_str().len())))
        .min_by_key(|&(d, _)| d)
        .map(|(_, verb)| verb)
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and transpositions of neighbours, each costing one.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between a[..i] and b[..j]; three rows suffice.
    let mut before = vec![0usize; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut current = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j] + 1).min(current[j - 1] + 1).min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            current[j] = best;
        }
        before = std::mem::replace(&mut previous, current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_count_swaps_as_one() {
        assert_eq!(distance("lsit", "list"), 1);
        assert_eq!(distance("stauts", "status"), 1);
        assert_eq!(distance("cancle", "cancel"), 1);
        assert_eq!(distance("atach", "attach"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn typos_find_their_word() {
        for (typo, verb) in [
            ("lsit", Verb::List),
            ("stauts", Verb::Status),
            ("statsu", Verb::Status),
            ("cancle", Verb::Cancel),
            ("atach", Verb::Attach),
            ("attatch", Verb::Attach),
            ("folow", Verb::Follow),
            ("runner", Verb::Runners),
            ("Status", Verb::Status),
            ("hlep", Verb::Help),
            ("subimt", Verb::Submit),
        ] {
            assert_eq!(closest(typo), Some(verb), "{typo}");
        }
    }

    #[test]
    fn ordinary_words_are_not_typos() {
        for word in [
            "fix", "add", "refactor", "make", "test", "update", "write", "explain", "why",
        ] {
            assert_eq!(closest(word), None, "{word}");
        }
        assert_eq!(closest("LIST"), Some(Verb::List));
    }
}
