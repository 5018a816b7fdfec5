//! Boot benchmark (placeholder filled in step 4).
