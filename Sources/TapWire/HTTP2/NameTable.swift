/// A fixed map from header names to values, looked up once per header field on the decoding and span paths.
///
/// Names are bucketed by their UTF-8 length, so a lookup is a length, an index and usually one byte comparison, with
/// no hashing: a `Dictionary` and a `Set` lookup per header (seeding and finalizing a hasher for each) were a
/// visible share of building a span. Inlinable, so that other modules get it specialized for their value type:
/// unspecialized, it cost the span thread about a fifth more CPU.
public struct NameTable<Value: Sendable>: Sendable {
    @usableFromInline var buckets: [[(name: String, value: Value)]]

    /// A table of `entries`; a repeated name keeps its first value.
    @inlinable
    public init(_ entries: KeyValuePairs<String, Value>) {
        let longest = entries.map(\.key.utf8.count).max() ?? 0
        buckets = Array(repeating: [], count: longest + 1)
        for (name, value) in entries where !buckets[name.utf8.count].contains(where: { $0.name == name }) {
            buckets[name.utf8.count].append((name, value))
        }
    }

    /// The value for `name`, if the table has it.
    @inlinable
    public subscript(name: String) -> Value? {
        let length = name.utf8.count
        guard length < buckets.count else { return nil }
        for entry in buckets[length] where entry.name == name { return entry.value }
        return nil
    }
}
