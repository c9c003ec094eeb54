//! Python values in and out: prompts (a string, a conversation of `{"role", "content"}` dicts,
//! an instruction dict, or a list of these for a batch) and arrays (NumPy, or torch on request).

use numpy::{IntoPyArray, PyArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use stainedglass_text::{Instruction, Message, PromptInput, Role};
use std::collections::HashMap;

/// What `apply` / `TokenizerWrapper.__call__` were given.
pub enum Prompts {
    One(PromptInput),
    Batch(Vec<PromptInput>),
}

fn message(i: usize, m: &Bound<'_, PyAny>) -> PyResult<Message> {
    let d: HashMap<String, String> = m.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "message {i} must be a dict with string `role` and `content`"
        ))
    })?;
    let role = d
        .get("role")
        .ok_or_else(|| PyValueError::new_err(format!("message {i} has no `role`")))?;
    let content = d
        .get("content")
        .ok_or_else(|| PyValueError::new_err(format!("message {i} has no `content`")))?;
    let role = Role::parse(role).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(Message::new(role, content.clone()))
}

fn instruction(d: &Bound<'_, PyAny>) -> PyResult<PromptInput> {
    let d: HashMap<String, String> = d.extract().map_err(|_| {
        PyTypeError::new_err("an instruction prompt is a dict of strings: instruction, context, system_prompt, response")
    })?;
    for k in d.keys() {
        if !["instruction", "context", "system_prompt", "response"].contains(&k.as_str()) {
            return Err(PyValueError::new_err(format!(
                "unknown instruction field `{k}`: use instruction, context, system_prompt, response"
            )));
        }
    }
    Ok(PromptInput::Instruction(Instruction {
        instruction: d
            .get("instruction")
            .cloned()
            .ok_or_else(|| PyValueError::new_err("an instruction prompt needs `instruction`"))?,
        system_prompt: d.get("system_prompt").cloned(),
        context: d.get("context").cloned(),
        response: d.get("response").cloned(),
    }))
}

/// One prompt: a string (one user message), a conversation, or (for instruction wrappers) a
/// dict.
fn one(p: &Bound<'_, PyAny>, instructions: bool) -> PyResult<PromptInput> {
    if let Ok(s) = p.extract::<String>() {
        return Ok(if instructions {
            PromptInput::Instruction(Instruction {
                instruction: s,
                ..Instruction::default()
            })
        } else {
            PromptInput::Chat(vec![Message::new(Role::User, s)])
        });
    }
    if instructions && p.is_instance_of::<PyDict>() {
        return instruction(p);
    }
    let list = p.cast::<PyList>().map_err(|_| {
        PyTypeError::new_err(
            "a prompt is a string, a list of {\"role\", \"content\"} dicts, or (prompt_type=\"instruction\") a dict",
        )
    })?;
    let messages = list
        .iter()
        .enumerate()
        .map(|(i, m)| message(i, &m))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PromptInput::Chat(messages))
}

/// A prompt, or a list of prompts (a list whose items are strings, lists or — for instruction
/// wrappers — dicts is a batch; a list of message dicts is one conversation).
pub fn prompts(p: &Bound<'_, PyAny>, instructions: bool) -> PyResult<Prompts> {
    if let Ok(list) = p.cast::<PyList>() {
        let batch = match list.iter().next() {
            None => return Err(PyValueError::new_err("the prompt is an empty list")),
            Some(first) => {
                first.extract::<String>().is_ok()
                    || first.is_instance_of::<PyList>()
                    || (instructions && first.is_instance_of::<PyDict>())
            }
        };
        if batch {
            return Ok(Prompts::Batch(
                list.iter()
                    .map(|x| one(&x, instructions))
                    .collect::<PyResult<_>>()?,
            ));
        }
    }
    Ok(Prompts::One(one(p, instructions)?))
}

/// How arrays are returned.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tensors {
    Numpy,
    Torch,
}

pub fn return_tensors(s: &str) -> PyResult<Tensors> {
    match s {
        "np" => Ok(Tensors::Numpy),
        "pt" => Ok(Tensors::Torch),
        o => Err(PyValueError::new_err(format!(
            "return_tensors must be \"np\" or \"pt\", not {o:?}"
        ))),
    }
}

/// `v` as an array of `shape` (no copy: NumPy takes the vector), converted to a torch tensor
/// (sharing memory) when asked.
pub fn array<'py, T: numpy::Element>(
    py: Python<'py>,
    v: Vec<T>,
    shape: &[usize],
    t: Tensors,
) -> PyResult<Bound<'py, PyAny>> {
    let a = v.into_pyarray(py).reshape(shape.to_vec())?.into_any();
    match t {
        Tensors::Numpy => Ok(a),
        Tensors::Torch => {
            let torch = py.import("torch").map_err(|_| {
                pyo3::exceptions::PyImportError::new_err(
                    "return_tensors=\"pt\" needs torch: pip install torch (or use \"np\")",
                )
            })?;
            torch.call_method1("from_numpy", (a,))
        }
    }
}
