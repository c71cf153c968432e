import TapWire

/// Decides which metadata values never reach a recording.
///
/// `authorization` is always withheld (the decoder already withholds it; this checks again by name, whatever the
/// case). With `personal` on, the keys that identify a person (GITALY-WIRE.md §2) are withheld too. A withheld
/// value is stored as a marker: the key stays, so a replay knows the call carried it.
public struct HeaderRedaction: Sendable, Equatable {
    /// Keys withheld in every recording.
    public static let secretKeys: Set<String> = ["authorization", "proxy-authorization", "cookie"]
    /// Keys withheld with `--redact`: user names and ids, addresses, SSH key ids.
    public static let personalKeys: Set<String> = [
        "username", "user_id", "remote_ip", "key_id", "key_type", "gl_username", "gl_id", "x-forwarded-for",
        "x-real-ip",
    ]

    /// Bit n is set when a key of `secretKeys` (or of either set) is n bytes long.
    private static let secretKeyLengths = lengthMask(secretKeys)
    private static let keyLengths = lengthMask(secretKeys.union(personalKeys))

    private static func lengthMask(_ keys: Set<String>) -> UInt64 {
        keys.reduce(0) { $0 | 1 << $1.utf8.count }
    }

    /// Whether `personalKeys` are withheld.
    public var personal: Bool

    public init(personal: Bool = false) {
        self.personal = personal
    }

    /// True when the value of `name` must not be stored.
    public func withholds(_ name: String) -> Bool {
        // Most names have a length no withheld key has: they are let through without a lower-cased copy and a hash.
        let length = name.utf8.count
        guard length < 64, (personal ? Self.keyLengths : Self.secretKeyLengths) & (1 << length) != 0 else { return false }
        let key = name.lowercased()
        return Self.secretKeys.contains(key) || (personal && Self.personalKeys.contains(key))
    }

    /// The fields as they may be stored.
    public func apply(_ fields: [RawHeaderField]) -> [RecordedHeader] {
        fields.map { field in
            if field.redacted || withholds(field.name) {
                return RecordedHeader(name: field.name, value: [], redacted: true)
            }
            return RecordedHeader(name: field.name, value: field.value)
        }
    }
}
