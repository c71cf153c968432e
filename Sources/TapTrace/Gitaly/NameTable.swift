/// A fixed map from metadata names to values, looked up once per request header on the span path.
///
/// Names are bucketed by their UTF-8 length, so a lookup is a length, an index and usually one byte comparison, with
/// no hashing: a `Dictionary` and a `Set` lookup per header (seeding and finalizing a hasher for each) were a
/// visible share of building a span.
struct NameTable<Value: Sendable>: Sendable {
    private var buckets: [[(name: String, value: Value)]]

    /// A table of `entries`; a repeated name keeps its first value.
    init(_ entries: KeyValuePairs<String, Value>) {
        let longest = entries.map(\.key.utf8.count).max() ?? 0
        buckets = Array(repeating: [], count: longest + 1)
        for (name, value) in entries where !buckets[name.utf8.count].contains(where: { $0.name == name }) {
            buckets[name.utf8.count].append((name, value))
        }
    }

    /// The value for `name`, if the table has it.
    subscript(name: String) -> Value? {
        let length = name.utf8.count
        guard length < buckets.count else { return nil }
        for entry in buckets[length] where entry.name == name { return entry.value }
        return nil
    }
}
