#if canImport(Glibc)
import Glibc
#endif

/// Strings made from header octets, kept so that a name or value seen again becomes the same string without a new
/// allocation.
///
/// A connection sends the same path, user agent, content type and metadata names with every call. Making each of
/// them anew cost an allocation and a UTF-8 check per field on the event loop, and a free on the span thread.
/// Direct-mapped and small: a value that never repeats (a correlation id) only takes one slot until something
/// else hashes there. Strings of up to 15 bytes are stored inline by Swift and need no caching.
struct HeaderStrings: Sendable {
    private static let slotCount = 64
    private static let longest = 256
    /// Allocated at the first string worth keeping: an idle connection pays nothing.
    private var slots: [String?] = []

    /// `bytes` as a string (octets that are not UTF-8 repaired, as `String(decoding:as:)` does).
    mutating func string(_ bytes: UnsafeRawBufferPointer) -> String {
        guard bytes.count > 15, bytes.count <= Self.longest else { return String(decoding: bytes, as: UTF8.self) }
        // Hashed on the length and the first and last 8 octets (there are at least 16): cheap, and enough to tell
        // apart the few dozen names and values a connection repeats.
        let head = bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
        let tail = bytes.loadUnaligned(fromByteOffset: bytes.count - 8, as: UInt64.self)
        let hash = (head ^ (tail &* 0x9E37_79B9_7F4A_7C15) ^ UInt64(bytes.count)) &* 0xBF58_476D_1CE4_E5B9
        let slot = Int(truncatingIfNeeded: hash >> 58)  // the top 6 bits: 64 slots
        if slots.isEmpty { slots = Array(repeating: nil, count: Self.slotCount) }
        if let cached = slots[slot], Self.same(cached, bytes) { return cached }
        let made = String(decoding: bytes, as: UTF8.self)
        slots[slot] = made
        return made
    }

    /// True when `text`'s UTF-8 is exactly `bytes` (never true for octets that needed repair).
    private static func same(_ text: String, _ bytes: UnsafeRawBufferPointer) -> Bool {
        text.utf8.count == bytes.count
            && text.utf8.withContiguousStorageIfAvailable { stored in
                memcmp(stored.baseAddress!, bytes.baseAddress!, bytes.count) == 0
            } == true
    }
}

extension HeaderBlock {
    /// The name of field `index`, from `strings` when it was seen before.
    func name(at index: Int, strings: inout HeaderStrings) -> String {
        withName(at: index) { strings.string($0) }
    }

    /// The value of field `index` as text, from `strings` when it was seen before.
    func value(at index: Int, strings: inout HeaderStrings) -> String {
        withValue(at: index) { strings.string($0) }
    }
}
