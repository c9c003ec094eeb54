//! Hugging Face chat templates (Jinja) rendered with minijinja the way `transformers` does:
//! `trim_blocks` and `lstrip_blocks` on, Python string methods (`pycompat`), `raise_exception`,
//! and a `tojson` that does not HTML-escape.

use crate::error::{Error, Result};
use crate::prompt::Message;
use minijinja::{Environment, ErrorKind, Value};

const NAME: &str = "chat";

/// A compiled chat template plus the special tokens it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// Python's `json.dumps(x, ensure_ascii=False, indent=indent)` as `transformers` uses it:
/// `", "` and `": "` separators, no HTML escaping.
fn py_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let nl = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, depth + 1);
                py_json(x, indent, depth + 1, out);
            }
            nl(out, depth);
            out.push(']');
        }
        J::Object(o) if !o.is_empty() => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, depth + 1);
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push_str(": ");
                py_json(x, indent, depth + 1, out);
            }
            nl(out, depth);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

fn tojson(v: Value, indent: Option<usize>) -> std::result::Result<Value, minijinja::Error> {
    let j = serde_json::to_value(&v)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut s = String::new();
    py_json(&j, indent, 0, &mut s);
    Ok(Value::from_safe_string(s))
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME.to_string(), source.to_string())
            .map_err(|e| Error::Template(format!("does not compile: {e}")))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::Template(e.to_string()))?;
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        tmpl.render(minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        })
        .map_err(|e| {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                s.push_str(&format!(": {c}"));
                src = c.source();
            }
            Error::Template(s)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::Role;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "<s>", "</s>").expect("template");
        let s = t
            .render(&[Message::new(Role::User, "Hi")], true)
            .expect("render");
        assert_eq!(s, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn raise_exception_becomes_an_error_and_pycompat_methods_work() {
        let src = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system messages') }}{% endif %}{{ bos_token + m.content.strip() | upper }}{% endfor %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").expect("template");
        assert_eq!(
            t.render(&[Message::new(Role::User, "  hi ")], false)
                .expect("render"),
            "<s>HI"
        );
        let err = t
            .render(&[Message::new(Role::System, "x")], false)
            .unwrap_err();
        assert!(err.to_string().contains("no system messages"), "{err}");
    }

    #[test]
    fn tojson_does_not_escape_html() {
        let t = ChatTemplate::new("{{ messages[0].content | tojson }}", "", "").expect("t");
        let s = t
            .render(&[Message::new(Role::User, "<b>\"x\" & y</b>")], false)
            .expect("render");
        assert_eq!(s, r#""<b>\"x\" & y</b>""#);
        let t = ChatTemplate::new("{{ messages | tojson }}", "", "").expect("t");
        let s = t
            .render(&[Message::new(Role::User, "é")], false)
            .expect("render");
        assert_eq!(s, r#"[{"role": "user", "content": "é"}]"#);
    }

    #[test]
    fn a_broken_template_is_a_clear_error() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
        assert!(err.to_string().contains("does not compile"), "{err}");
    }
}
