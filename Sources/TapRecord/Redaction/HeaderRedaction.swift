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

    /// Whether `personalKeys` are withheld.
    public var personal: Bool

    public init(personal: Bool = false) {
        self.personal = personal
    }

    /// True when the value of `name` must not be stored.
    public func withholds(_ name: String) -> Bool {
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
