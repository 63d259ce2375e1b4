-- A grant covers exactly what the approver saw: the access (a read grant is not a write
-- grant) and, for an exec, the argv (see `store::grant_argv`). Rows from before this
-- migration have empty values and so still match only operations with neither.
ALTER TABLE grants ADD COLUMN access TEXT NOT NULL DEFAULT '';
ALTER TABLE grants ADD COLUMN argv TEXT NOT NULL DEFAULT '';
