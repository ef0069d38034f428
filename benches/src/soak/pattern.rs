//! The deterministic byte streams the soak test sends and checks: byte `i` of
//! the stream of `seed` depends only on `seed` and `i`, so the side that reads
//! regenerates what the side that wrote sent, without keeping a copy.

/// A position in the byte stream of one seed.
#[derive(Debug, Clone)]
pub struct Pattern {
    seed: u64,
    offset: u64,
    /// The 8 bytes of the block `offset / 8`.
    word: u64,
}

impl Pattern {
    /// The stream of `seed`, from its start.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            offset: 0,
            word: block(seed, 0),
        }
    }

    /// Bytes produced (or checked) so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for byte in buf.iter_mut() {
            *byte = self.next_byte();
        }
    }

    /// Compares `data` with the next bytes of the stream; the offset (from the
    /// stream's start) of the first byte that differs, if any.
    pub fn check(&mut self, data: &[u8]) -> Result<(), u64> {
        for byte in data {
            let at = self.offset;
            if *byte != self.next_byte() {
                return Err(at);
            }
        }
        Ok(())
    }

    fn next_byte(&mut self) -> u8 {
        let byte = (self.word >> ((self.offset % 8) * 8)) as u8;
        self.offset += 1;
        if self.offset.is_multiple_of(8) {
            self.word = block(self.seed, self.offset / 8);
        }
        byte
    }
}

fn block(seed: u64, index: u64) -> u64 {
    splitmix64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_checks_against_itself_in_any_chunking_and_finds_the_first_bad_byte() {
        let mut data = vec![0u8; 10_000];
        Pattern::new(7).fill(&mut data);
        let mut reader = Pattern::new(7);
        for chunk in data.chunks(333) {
            reader.check(chunk).unwrap();
        }
        assert_eq!(reader.offset(), 10_000);

        data[4321] ^= 1;
        let mut reader = Pattern::new(7);
        assert_eq!(reader.check(&data), Err(4321));
        assert!(
            Pattern::new(8).check(&data[..64]).is_err(),
            "another seed is another stream"
        );
    }
}
