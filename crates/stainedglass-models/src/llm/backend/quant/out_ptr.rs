//! A product's output buffer shared by its parallel tasks, each writing its own elements.

#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: the product's tasks write disjoint elements and are joined before `out` is read.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    pub(super) fn at(self, i: usize) -> *mut f32 {
        // SAFETY: callers index inside `out`.
        unsafe { self.0.add(i) }
    }
}
