//! Deterministic inputs for the tests that generate their own (hostile requests, fuzz sweeps): a
//! seeded xorshift whose every case can be replayed alone, and the seed taken from the environment.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

/// xorshift64: tiny, seedable, good enough to pick mutations. Not for anything secret.
pub struct Xorshift(pub u64);

impl Xorshift {
    /// A generator for case `index` of run `seed`: each case can be replayed on its own.
    pub fn for_case(seed: u64, index: usize) -> Xorshift {
        let mixed = splitmix(seed ^ splitmix(index as u64));
        Xorshift(mixed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    pub fn bytes_between(&mut self, low: usize, high: usize) -> Vec<u8> {
        let n = self.between(low, high);
        self.bytes(n)
    }

    pub fn text_from(&mut self, alphabet: &[u8], n: usize) -> Vec<u8> {
        (0..n).map(|_| *self.pick(alphabet)).collect()
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The run's seed: environment variable `name` (decimal or 0x-hex) if set, else `default`.
pub fn seed_from_env(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number"))
        }
        Err(_) => default,
    }
}
