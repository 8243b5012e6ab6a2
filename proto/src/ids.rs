//! Object ids: 25 random lowercase base-36 characters, like Swarm's, so that a
//! short prefix (the 12 characters tables show) is almost always unique.

use rand::Rng;

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Length of a full id.
pub const ID_LEN: usize = 25;

/// Length of the prefix that tables print.
pub const SHORT_LEN: usize = 12;

/// A fresh random id.
pub fn new_id() -> String {
    let mut rng = rand::rng();
    (0..ID_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The prefix of `id` shown in tables.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(SHORT_LEN)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_long_distinct_and_lowercase() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), ID_LEN);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| ALPHABET.contains(&c)));
        assert_eq!(short(&a).len(), SHORT_LEN);
    }
}
