//! The two prompt types of the wrapper: chat conversations and instruction records.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            other => Err(Error::Prompt(format!(
                "unknown role `{other}`; use system, user or assistant"
            ))),
        }
    }
}

/// One chat message (OpenAI / Hugging Face style).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }

    /// Parses `[{"role": …, "content": …}, …]`, naming the first bad message.
    pub fn parse_conversation(v: &serde_json::Value) -> Result<Vec<Message>> {
        let arr = v
            .as_array()
            .ok_or_else(|| Error::Prompt("a conversation must be a JSON array".into()))?;
        arr.iter()
            .enumerate()
            .map(|(i, m)| {
                let role = m
                    .get("role")
                    .and_then(|r| r.as_str())
                    .ok_or_else(|| Error::Prompt(format!("message {i} lacks a string `role`")))?;
                let content = m.get("content").and_then(|r| r.as_str()).ok_or_else(|| {
                    Error::Prompt(format!("message {i} lacks a string `content`"))
                })?;
                Ok(Message::new(Role::parse(role)?, content))
            })
            .collect()
    }
}

/// An instruction record; rendered through the chat template as system / user / assistant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    pub instruction: String,
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub response: Option<String>,
}

impl Instruction {
    /// The equivalent conversation: context follows the instruction after a blank line.
    pub fn to_messages(&self) -> Vec<Message> {
        let mut m = Vec::new();
        if let Some(s) = self.system_prompt.as_ref().filter(|s| !s.is_empty()) {
            m.push(Message::new(Role::System, s.clone()));
        }
        let user = match self.context.as_ref().filter(|c| !c.is_empty()) {
            Some(c) => format!("{}\n\n{}", self.instruction, c),
            None => self.instruction.clone(),
        };
        m.push(Message::new(Role::User, user));
        if let Some(r) = &self.response {
            m.push(Message::new(Role::Assistant, r.clone()));
        }
        m
    }
}

/// Either prompt type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    Chat(Vec<Message>),
    Instruction(Instruction),
}

impl PromptInput {
    pub fn messages(&self) -> Vec<Message> {
        match self {
            PromptInput::Chat(m) => m.clone(),
            PromptInput::Instruction(i) => i.to_messages(),
        }
    }
}
