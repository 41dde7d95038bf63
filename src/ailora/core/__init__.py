"""The exact core: everything ``ailora.apply`` and ``ailora.save`` need, and nothing of training.

layouts (the rows of each role in a fused projection) -> roles (which module holds which
projection, by architecture or by the usual module names) -> svd (solvers, sign convention) ->
inits (one pure function per start) -> policies (the LoRA family as per-role starts) ->
apply (validate, plan, wrap, write, check) with probe (the output check) and state (what was
done) -> adapters (save as plain LoRA for the original base, load, merge), convert, optim
(parameter groups), models (loading checkpoints and the offline models), files (atomic writes),
workflows (the init and merge commands as library calls).
"""
