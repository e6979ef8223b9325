package org.qwenmobile.core;

import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small JSON reader and writer for the app's pure-Java logic.
 *
 * <p>Android's org.json is only stubs on a desktop JVM (every call throws "Stub!"), so the logic that JUnit tests
 * cannot use it. Objects become {@link LinkedHashMap} (key order kept, so written files read like the runner's),
 * arrays {@link ArrayList}, integers {@link Long} (or {@link Double} beyond long), other numbers {@link Double}.
 */
public final class Json {
    private Json() {}

    /** A parse error with the offset, so a bad line of the runner's output can be quoted with where it broke. */
    public static final class ParseException extends Exception {
        public final int offset;

        ParseException(String message, int offset) {
            super(message + " at offset " + offset);
            this.offset = offset;
        }
    }

    public static Object parse(String text) throws ParseException {
        Reader r = new Reader(text);
        r.skipWs();
        Object v = r.value();
        r.skipWs();
        if (r.pos != text.length()) throw new ParseException("trailing characters after the JSON value", r.pos);
        return v;
    }

    @SuppressWarnings("unchecked")
    public static Map<String, Object> parseObject(String text) throws ParseException {
        Object v = parse(text);
        if (!(v instanceof Map)) throw new ParseException("expected a JSON object", 0);
        return (Map<String, Object>) v;
    }

    private static final class Reader {
        final String s;
        int pos;

        Reader(String s) {
            this.s = s;
        }

        void skipWs() {
            while (pos < s.length()) {
                char c = s.charAt(pos);
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') pos++;
                else break;
            }
        }

        ParseException err(String m) {
            return new ParseException(m, pos);
        }

        Object value() throws ParseException {
            if (pos >= s.length()) throw err("unexpected end of input");
            char c = s.charAt(pos);
            switch (c) {
                case '{': return object();
                case '[': return array();
                case '"': return string();
                case 't': return literal("true", Boolean.TRUE);
                case 'f': return literal("false", Boolean.FALSE);
                case 'n': return literal("null", null);
                default:
                    if (c == '-' || (c >= '0' && c <= '9')) return number();
                    throw err("unexpected character '" + c + "'");
            }
        }

        Object literal(String word, Object v) throws ParseException {
            if (!s.startsWith(word, pos)) throw err("invalid literal");
            pos += word.length();
            return v;
        }

        Map<String, Object> object() throws ParseException {
            LinkedHashMap<String, Object> m = new LinkedHashMap<String, Object>();
            pos++;
            skipWs();
            if (pos < s.length() && s.charAt(pos) == '}') {
                pos++;
                return m;
            }
            while (true) {
                skipWs();
                if (pos >= s.length() || s.charAt(pos) != '"') throw err("expected a string key");
                String k = string();
                skipWs();
                if (pos >= s.length() || s.charAt(pos) != ':') throw err("expected ':'");
                pos++;
                skipWs();
                m.put(k, value());
                skipWs();
                if (pos >= s.length()) throw err("unterminated object");
                char c = s.charAt(pos++);
                if (c == '}') return m;
                if (c != ',') throw err("expected ',' or '}'");
            }
        }

        List<Object> array() throws ParseException {
            ArrayList<Object> a = new ArrayList<Object>();
            pos++;
            skipWs();
            if (pos < s.length() && s.charAt(pos) == ']') {
                pos++;
                return a;
            }
            while (true) {
                skipWs();
                a.add(value());
                skipWs();
                if (pos >= s.length()) throw err("unterminated array");
                char c = s.charAt(pos++);
                if (c == ']') return a;
                if (c != ',') throw err("expected ',' or ']'");
            }
        }

        String string() throws ParseException {
            pos++;
            StringBuilder b = new StringBuilder();
            while (true) {
                if (pos >= s.length()) throw err("unterminated string");
                char c = s.charAt(pos++);
                if (c == '"') return b.toString();
                if (c < 0x20) throw err("control character in string");
                if (c != '\\') {
                    b.append(c);
                    continue;
                }
                if (pos >= s.length()) throw err("unterminated escape");
                char e = s.charAt(pos++);
                switch (e) {
                    case '"': b.append('"'); break;
                    case '\\': b.append('\\'); break;
                    case '/': b.append('/'); break;
                    case 'b': b.append('\b'); break;
                    case 'f': b.append('\f'); break;
                    case 'n': b.append('\n'); break;
                    case 'r': b.append('\r'); break;
                    case 't': b.append('\t'); break;
                    case 'u':
                        if (pos + 4 > s.length()) throw err("short \\u escape");
                        int cp = 0;
                        for (int i = 0; i < 4; i++) {
                            int d = Character.digit(s.charAt(pos + i), 16);
                            if (d < 0) throw err("bad \\u escape");
                            cp = cp * 16 + d;
                        }
                        pos += 4;
                        b.append((char) cp);  // surrogate pairs arrive as two escapes and join up in the UTF-16 string
                        break;
                    default:
                        throw err("bad escape '\\" + e + "'");
                }
            }
        }

        Object number() throws ParseException {
            int start = pos;
            if (s.charAt(pos) == '-') pos++;
            boolean isFloat = false;
            while (pos < s.length()) {
                char c = s.charAt(pos);
                if (c >= '0' && c <= '9') pos++;
                else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
                    isFloat = true;
                    pos++;
                } else break;
            }
            String t = s.substring(start, pos);
            try {
                if (!isFloat) {
                    try {
                        return Long.valueOf(t);
                    } catch (NumberFormatException tooBig) {
                        return Double.valueOf(t);
                    }
                }
                return Double.valueOf(t);
            } catch (NumberFormatException ex) {
                pos = start;
                throw err("bad number '" + t + "'");
            }
        }
    }

    // ---- writing -----------------------------------------------------------------------------------------------

    public static String write(Object v) {
        StringBuilder b = new StringBuilder();
        write(b, v, -1, 0);
        return b.toString();
    }

    /** Indented output (files meant to be read by people as well as by `qwen-mobile bench`). */
    public static String writePretty(Object v) {
        StringBuilder b = new StringBuilder();
        write(b, v, 2, 0);
        return b.append('\n').toString();
    }

    private static void newline(StringBuilder b, int indent, int depth) {
        if (indent < 0) return;
        b.append('\n');
        for (int i = 0; i < indent * depth; i++) b.append(' ');
    }

    @SuppressWarnings("unchecked")
    private static void write(StringBuilder b, Object v, int indent, int depth) {
        if (v == null) {
            b.append("null");
        } else if (v instanceof String) {
            quote(b, (String) v);
        } else if (v instanceof Boolean) {
            b.append(v.toString());
        } else if (v instanceof Double || v instanceof Float) {
            double d = ((Number) v).doubleValue();
            // JSON has no NaN or infinity; a value that cannot be measured is null by the bench schema's rule.
            if (Double.isNaN(d) || Double.isInfinite(d)) b.append("null");
            else if (d == Math.rint(d) && Math.abs(d) < 1e15) b.append(Long.toString((long) d)).append(".0");
            else b.append(Double.toString(d));
        } else if (v instanceof java.math.BigInteger) {
            b.append(v.toString());
        } else if (v instanceof Number) {
            b.append(((Number) v).longValue());
        } else if (v instanceof Map) {
            Map<String, Object> m = (Map<String, Object>) v;
            if (m.isEmpty()) {
                b.append("{}");
                return;
            }
            b.append('{');
            Iterator<Map.Entry<String, Object>> it = m.entrySet().iterator();
            while (it.hasNext()) {
                Map.Entry<String, Object> e = it.next();
                newline(b, indent, depth + 1);
                quote(b, e.getKey());
                b.append(indent < 0 ? ":" : ": ");
                write(b, e.getValue(), indent, depth + 1);
                if (it.hasNext()) b.append(',');
            }
            newline(b, indent, depth);
            b.append('}');
        } else if (v instanceof List) {
            List<Object> a = (List<Object>) v;
            if (a.isEmpty()) {
                b.append("[]");
                return;
            }
            b.append('[');
            for (int i = 0; i < a.size(); i++) {
                // Arrays of numbers stay on one line: token id lists would otherwise take a line per id.
                if (!(a.get(i) instanceof Number)) newline(b, indent, depth + 1);
                write(b, a.get(i), indent, depth + 1);
                if (i + 1 < a.size()) b.append(',');
                if (indent >= 0 && a.get(i) instanceof Number && i + 1 < a.size()) b.append(' ');
            }
            if (!(a.get(a.size() - 1) instanceof Number)) newline(b, indent, depth);
            b.append(']');
        } else if (v instanceof int[]) {
            int[] a = (int[]) v;
            ArrayList<Object> l = new ArrayList<Object>(a.length);
            for (int x : a) l.add(Long.valueOf(x));
            write(b, l, indent, depth);
        } else {
            throw new IllegalArgumentException("cannot write " + v.getClass().getName() + " as JSON");
        }
    }

    public static void quote(StringBuilder b, String s) {
        b.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20 || c == 0x2028 || c == 0x2029) b.append(String.format("\\u%04x", (int) c));
                    else b.append(c);
            }
        }
        b.append('"');
    }

    // ---- typed access with errors that name the field ------------------------------------------------------------

    @SuppressWarnings("unchecked")
    public static Map<String, Object> obj(Object v, String field) {
        if (!(v instanceof Map)) throw new IllegalArgumentException(field + ": expected an object");
        return (Map<String, Object>) v;
    }

    @SuppressWarnings("unchecked")
    public static List<Object> arr(Object v, String field) {
        if (!(v instanceof List)) throw new IllegalArgumentException(field + ": expected an array");
        return (List<Object>) v;
    }

    public static String str(Object v, String field) {
        if (!(v instanceof String)) throw new IllegalArgumentException(field + ": expected a string");
        return (String) v;
    }

    public static double num(Object v, String field) {
        if (!(v instanceof Number)) throw new IllegalArgumentException(field + ": expected a number");
        return ((Number) v).doubleValue();
    }

    public static long integer(Object v, String field) {
        if (v instanceof Long) return (Long) v;
        if (v instanceof Double && ((Double) v) == Math.rint((Double) v) && !((Double) v).isInfinite()) {
            return ((Double) v).longValue();
        }
        throw new IllegalArgumentException(field + ": expected an integer");
    }

    public static int[] intArray(Object v, String field) {
        List<Object> a = arr(v, field);
        int[] out = new int[a.size()];
        for (int i = 0; i < out.length; i++) out[i] = (int) integer(a.get(i), field + "[" + i + "]");
        return out;
    }

    public static List<Object> list(int[] ids) {
        ArrayList<Object> l = new ArrayList<Object>(ids.length);
        for (int x : ids) l.add(Long.valueOf(x));
        return l;
    }
}
