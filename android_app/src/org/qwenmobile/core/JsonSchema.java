package org.qwenmobile.core;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;

/**
 * The subset of JSON Schema (draft 2020-12) that runtime/schemas/*.json use, so the app validates a manifest against
 * the very file the Python toolkit uses (packaged as an asset) instead of a hand copy that drifts.
 *
 * <p>Keywords: $ref (local #/$defs/...), type, const, enum, required, properties, additionalProperties, items,
 * minItems, minProperties, minLength, minimum, maximum, exclusiveMinimum, pattern, allOf, anyOf, oneOf, if/then/else.
 * An unknown keyword that constrains values is an error at construction, so a schema change that this subset cannot
 * follow fails loudly in the shared-vector test instead of passing silently. Error paths are jsonschema's
 * {@code absolute_path} joined by "/" ("(top level)" at the root), which the Python side prints too.
 */
public final class JsonSchema {
    private static final String[] KNOWN = {"$schema", "$id", "$defs", "$ref", "title", "description", "type", "const",
        "enum", "required", "properties", "additionalProperties", "items", "minItems", "maxItems", "minProperties", "minLength",
        "minimum", "maximum", "exclusiveMinimum", "pattern", "allOf", "anyOf", "oneOf", "if", "then", "else"};

    private final Map<String, Object> root;

    public static final class Error {
        public final String path;
        public final String message;

        Error(String path, String message) {
            this.path = path;
            this.message = message;
        }

        @Override
        public String toString() {
            return "field '" + path + "': " + message;
        }
    }

    public JsonSchema(Map<String, Object> schema) {
        this.root = schema;
        checkKeywords(schema, "#");
    }

    @SuppressWarnings("unchecked")
    private static void checkKeywords(Object node, String where) {
        if (node instanceof List) {
            for (Object x : (List<Object>) node) checkKeywords(x, where);
            return;
        }
        if (!(node instanceof Map)) return;
        Map<String, Object> m = (Map<String, Object>) node;
        for (Map.Entry<String, Object> e : m.entrySet()) {
            String k = e.getKey();
            boolean known = false;
            for (String kw : KNOWN) known |= kw.equals(k);
            if (!known) throw new IllegalArgumentException("schema " + where + ": keyword '" + k + "' is not supported");
            if (k.equals("properties") || k.equals("$defs")) {
                for (Map.Entry<String, Object> p : Json.obj(e.getValue(), where + "/" + k).entrySet()) {
                    checkKeywords(p.getValue(), where + "/" + k + "/" + p.getKey());
                }
            } else if (k.equals("const") || k.equals("enum") || k.equals("required") || k.equals("description")
                    || k.equals("title")) {
                continue;
            } else {
                checkKeywords(e.getValue(), where + "/" + k);
            }
        }
    }

    /** The first violation, or null when the document is valid. */
    public Error validate(Object doc) {
        List<Error> errors = new ArrayList<Error>();
        check(doc, root, "", errors);
        return errors.isEmpty() ? null : errors.get(0);
    }

    private static String join(String path, String key) {
        return path.isEmpty() ? key : path + "/" + key;
    }

    private static String show(String path) {
        return path.isEmpty() ? "(top level)" : path;
    }

    @SuppressWarnings("unchecked")
    private void check(Object v, Object schemaNode, String path, List<Error> errors) {
        if (Boolean.TRUE.equals(schemaNode)) return;
        if (Boolean.FALSE.equals(schemaNode)) {
            errors.add(new Error(show(path), "no value is allowed here"));
            return;
        }
        Map<String, Object> s = (Map<String, Object>) schemaNode;
        Object ref = s.get("$ref");
        if (ref != null) check(v, resolve((String) ref), path, errors);
        Object type = s.get("type");
        if (type != null && !typeMatches(v, type)) {
            errors.add(new Error(show(path), Json.write(v) + " is not of type " + Json.write(type)));
            return;
        }
        if (s.containsKey("const") && !same(v, s.get("const"))) {
            errors.add(new Error(show(path), Json.write(s.get("const")) + " was expected, got " + Json.write(v)));
        }
        if (s.containsKey("enum")) {
            boolean ok = false;
            for (Object e : (List<Object>) s.get("enum")) ok |= same(v, e);
            if (!ok) errors.add(new Error(show(path), Json.write(v) + " is not one of " + Json.write(s.get("enum"))));
        }
        if (v instanceof Number && !(v instanceof Boolean)) {
            double d = ((Number) v).doubleValue();
            if (s.containsKey("minimum") && d < Json.num(s.get("minimum"), "minimum")) {
                errors.add(new Error(show(path), Json.write(v) + " is less than the minimum of " + s.get("minimum")));
            }
            if (s.containsKey("maximum") && d > Json.num(s.get("maximum"), "maximum")) {
                errors.add(new Error(show(path), Json.write(v) + " is greater than the maximum of " + s.get("maximum")));
            }
            if (s.containsKey("exclusiveMinimum") && d <= Json.num(s.get("exclusiveMinimum"), "exclusiveMinimum")) {
                errors.add(new Error(show(path), Json.write(v) + " is not greater than " + s.get("exclusiveMinimum")));
            }
        }
        if (v instanceof String) {
            String str = (String) v;
            if (s.containsKey("minLength") && str.codePointCount(0, str.length()) < Json.integer(s.get("minLength"), "")) {
                errors.add(new Error(show(path), Json.write(v) + " is too short"));
            }
            if (s.containsKey("pattern") && !Pattern.compile((String) s.get("pattern")).matcher(str).find()) {
                errors.add(new Error(show(path), Json.write(v) + " does not match " + Json.write(s.get("pattern"))));
            }
        }
        if (v instanceof List) {
            List<Object> a = (List<Object>) v;
            if (s.containsKey("minItems") && a.size() < Json.integer(s.get("minItems"), "")) {
                boolean one = Json.integer(s.get("minItems"), "") == 1;
                errors.add(new Error(show(path), Json.write(v) + (one ? " should be non-empty" : " is too short")));
            }
            if (s.containsKey("maxItems") && a.size() > Json.integer(s.get("maxItems"), "")) {
                errors.add(new Error(show(path), Json.write(v) + " is too long"));
            }
            if (s.containsKey("items")) {
                for (int i = 0; i < a.size(); i++) check(a.get(i), s.get("items"), join(path, String.valueOf(i)), errors);
            }
        }
        if (v instanceof Map) {
            Map<String, Object> m = (Map<String, Object>) v;
            if (s.containsKey("minProperties") && m.size() < Json.integer(s.get("minProperties"), "")) {
                errors.add(new Error(show(path), Json.write(v) + " should be non-empty"));
            }
            if (s.containsKey("required")) {
                for (Object r : (List<Object>) s.get("required")) {
                    if (!m.containsKey(r)) errors.add(new Error(show(path), "'" + r + "' is a required property"));
                }
            }
            Map<String, Object> props = s.containsKey("properties") ? (Map<String, Object>) s.get("properties") : null;
            for (Map.Entry<String, Object> e : m.entrySet()) {
                if (props != null && props.containsKey(e.getKey())) {
                    check(e.getValue(), props.get(e.getKey()), join(path, e.getKey()), errors);
                } else if (s.containsKey("additionalProperties")) {
                    check(e.getValue(), s.get("additionalProperties"), join(path, e.getKey()), errors);
                }
            }
        }
        if (s.containsKey("allOf")) {
            for (Object sub : (List<Object>) s.get("allOf")) check(v, sub, path, errors);
        }
        if (s.containsKey("anyOf")) {
            boolean any = false;
            for (Object sub : (List<Object>) s.get("anyOf")) any |= passes(v, sub, path);
            if (!any) errors.add(new Error(show(path), Json.write(v) + " is not valid under any of the given schemas"));
        }
        if (s.containsKey("oneOf")) {
            int n = 0;
            for (Object sub : (List<Object>) s.get("oneOf")) n += passes(v, sub, path) ? 1 : 0;
            if (n != 1) {
                errors.add(new Error(show(path), Json.write(v) + (n == 0 ? " is not valid under any of the given schemas"
                        : " is valid under each of " + n + " schemas")));
            }
        }
        if (s.containsKey("if")) {
            Object branch = passes(v, s.get("if"), path) ? s.get("then") : s.get("else");
            if (branch != null) check(v, branch, path, errors);
        }
    }

    private boolean passes(Object v, Object sub, String path) {
        List<Error> tmp = new ArrayList<Error>();
        check(v, sub, path, tmp);
        return tmp.isEmpty();
    }

    private Object resolve(String ref) {
        if (!ref.startsWith("#/")) throw new IllegalArgumentException("schema $ref " + ref + ": only local refs");
        Object node = root;
        for (String part : ref.substring(2).split("/")) node = Json.obj(node, "schema " + ref).get(part);
        if (node == null) throw new IllegalArgumentException("schema $ref " + ref + " does not resolve");
        return node;
    }

    @SuppressWarnings("unchecked")
    private static boolean typeMatches(Object v, Object type) {
        if (type instanceof List) {
            for (Object t : (List<Object>) type) if (typeMatches(v, t)) return true;
            return false;
        }
        String t = (String) type;
        if (t.equals("null")) return v == null;
        if (t.equals("boolean")) return v instanceof Boolean;
        if (t.equals("string")) return v instanceof String;
        if (t.equals("object")) return v instanceof Map;
        if (t.equals("array")) return v instanceof List;
        if (t.equals("number")) return v instanceof Number;
        if (t.equals("integer")) {
            // jsonschema counts 2.0 as an integer, like the draft says.
            return v instanceof Long || (v instanceof Double && ((Double) v) == Math.rint((Double) v)
                    && !((Double) v).isInfinite());
        }
        throw new IllegalArgumentException("schema type '" + t + "' is not supported");
    }

    @SuppressWarnings("unchecked")
    private static boolean same(Object a, Object b) {
        if (a == null || b == null) return a == b;
        if (a instanceof Boolean || b instanceof Boolean) return a.equals(b);  // true is not 1 in JSON Schema
        if (a instanceof Number && b instanceof Number) return ((Number) a).doubleValue() == ((Number) b).doubleValue();
        if (a instanceof List && b instanceof List) {
            List<Object> x = (List<Object>) a;
            List<Object> y = (List<Object>) b;
            if (x.size() != y.size()) return false;
            for (int i = 0; i < x.size(); i++) if (!same(x.get(i), y.get(i))) return false;
            return true;
        }
        if (a instanceof Map && b instanceof Map) {
            Map<String, Object> x = (Map<String, Object>) a;
            Map<String, Object> y = (Map<String, Object>) b;
            if (!x.keySet().equals(y.keySet())) return false;
            for (String k : x.keySet()) if (!same(x.get(k), y.get(k))) return false;
            return true;
        }
        return a.equals(b);
    }
}
