//! Incremental Internet checksum update (RFC 1624, equation 3), so that a
//! rewrite costs a few additions instead of a pass over the payload.

/// The one's-complement sum of `new - old` over every 16-bit word a rewrite
/// changed. One delta can be applied to every checksum that covers those
/// words (IP header, L4 pseudo-header, an enclosing ICMP error).
///
/// Kept unfolded (a plain 32-bit sum, congruent modulo 0xffff) and folded
/// only where it is read: a fold after every word is a chain of six
/// dependent instructions, several of them in each rewrite. Each word
/// adds at most 0x1fffe, so some 32,000 words fit before the sum could
/// wrap; a delta covers a few dozen at most (the longest, `reject`'s
/// header sums, are bounded arrays). The result is the
/// same bit for bit: a folded sum is 0 only when every term is, else the
/// one value in 1..=0xffff of its residue, however often it was folded on
/// the way.
#[derive(Clone, Copy, Default)]
pub struct CsumDelta(u32);

/// A 32-bit one's-complement sum folded to 16 bits (twice: the first
/// fold's carry may carry again).
#[inline(always)]
pub fn fold(sum: u32) -> u32 {
    let sum = (sum & 0xffff) + (sum >> 16);
    (sum & 0xffff) + (sum >> 16)
}

impl CsumDelta {
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 += u32::from(!old) + u32::from(new);
    }

    #[inline(always)]
    pub fn addr(&mut self, old: [u8; 4], new: [u8; 4]) {
        self.word(
            u16::from_be_bytes([old[0], old[1]]),
            u16::from_be_bytes([new[0], new[1]]),
        );
        self.word(
            u16::from_be_bytes([old[2], old[3]]),
            u16::from_be_bytes([new[2], new[3]]),
        );
    }

    /// As [`word`](Self::word), folded at once: for a long run of words,
    /// where LLVM would otherwise keep every unfolded partial sum live at
    /// once and overflow the 512-byte stack (`reject`'s header sums).
    #[inline(always)]
    pub fn word_folded(&mut self, old: u16, new: u16) {
        self.0 = fold(self.0 + u32::from(!old) + u32::from(new));
    }

    #[inline(always)]
    pub fn merge(&mut self, other: CsumDelta) {
        self.0 += other.0;
    }

    /// The folded sum, as `bpf_l4_csum_replace` takes a difference.
    #[inline(always)]
    pub fn value(self) -> u32 {
        fold(self.0)
    }

    /// HC' = ~(~HC + sum(~m + m')).
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !(fold(u32::from(!check) + self.0) as u16)
    }
}

#[inline(always)]
pub fn load16(field: *const [u8; 2]) -> u16 {
    // SAFETY: callers pass pointers that the verifier has bounds-checked.
    u16::from_be_bytes(unsafe { *field })
}

#[inline(always)]
pub fn store16(field: *mut [u8; 2], value: u16) {
    // SAFETY: as for `load16`.
    unsafe { *field = value.to_be_bytes() }
}

/// The value a checksum field must hold so that a pending partial checksum
/// (CHECKSUM_PARTIAL) leaves it as it is: the kernel or the NIC writes
/// `~(sum of the covered words, the field included)` into the field, so
/// the field `x` must solve `x = ~(others + x)` in one's complement
/// arithmetic, that is `2x = -others`, and halving is a rotation (2 is
/// invertible modulo 0xffff). `others` is the folded sum of every other
/// covered word. `None` when `others` is zero (0 or 0xffff): the only
/// solution is then zero, which the kernel writes as 0xffff and a NIC as
/// 0, so no value is safe.
#[inline(always)]
pub fn partial_fixed_point(others: u16) -> Option<u16> {
    if others == 0 || others == 0xffff {
        return None;
    }
    let minus = u32::from(!others);
    let half = if minus & 1 == 0 {
        minus / 2
    } else {
        (minus + 0xffff) / 2
    };
    Some(half as u16)
}
