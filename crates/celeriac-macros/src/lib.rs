//! The `#[celeriac::task]` attribute macro. Use it through the `celeriac`
//! crate, which documents it with examples.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{
    Expr, ExprLit, FnArg, GenericArgument, ItemFn, Lit, Meta, Pat, PathArguments, ReturnType,
    Token, Type,
};

/// Turns a function into a celeriac task. See `celeriac::task` for the
/// documentation.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

struct Options {
    name: Option<String>,
    diagnostic: bool,
    /// `.method(value)` calls on `TaskOptions::new()`.
    policy: Vec<TokenStream2>,
    /// The `pool = "..."` choice, to check it against the function.
    pool: Option<(String, proc_macro2::Span)>,
}

fn number(expr: &Expr, what: &str) -> syn::Result<f64> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<u64>().map(|v| v as f64),
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_parse::<f64>(),
        other => Err(syn::Error::new_spanned(
            other,
            format!("{what} takes a number of seconds"),
        )),
    }
}

fn boolean(expr: &Expr, what: &str) -> syn::Result<bool> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        other => Err(syn::Error::new_spanned(
            other,
            format!("{what} takes true or false"),
        )),
    }
}

fn parse_options(attr: TokenStream2) -> syn::Result<Options> {
    let mut opts = Options {
        name: None,
        diagnostic: false,
        policy: Vec::new(),
        pool: None,
    };
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    for meta in metas {
        match &meta {
            Meta::NameValue(nv) if nv.path.is_ident("name") => match &nv.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) => {
                    let v = s.value();
                    if v.is_empty() || v.chars().any(char::is_whitespace) {
                        return Err(syn::Error::new_spanned(
                            s,
                            "task name must be non-empty and contain no whitespace",
                        ));
                    }
                    opts.name = Some(v);
                }
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        "expected a string literal: name = \"tasks.add\"",
                    ));
                }
            },
            Meta::Path(p) if p.is_ident("diagnostic") => opts.diagnostic = true,
            Meta::Path(p) if p.is_ident("cheap") => {
                opts.policy.push(quote!(.cheap(true)));
            }
            Meta::NameValue(nv) if nv.path.is_ident("cheap") => {
                let v = boolean(&nv.value, "cheap")?;
                opts.policy.push(quote!(.cheap(#v)));
            }
            Meta::Path(p) if p.is_ident("track_started") => {
                opts.policy.push(quote!(.track_started(true)));
            }
            Meta::NameValue(nv) if nv.path.is_ident("track_started") => {
                let v = boolean(&nv.value, "track_started")?;
                opts.policy.push(quote!(.track_started(#v)));
            }
            Meta::NameValue(nv) if nv.path.is_ident("max_retries") => {
                let v = match &nv.value {
                    Expr::Lit(ExprLit {
                        lit: Lit::Int(i), ..
                    }) => {
                        let n: u32 = i.base10_parse()?;
                        quote!(::core::option::Option::Some(#n))
                    }
                    Expr::Path(p) if p.path.is_ident("None") => {
                        quote!(::core::option::Option::None)
                    }
                    other => {
                        return Err(syn::Error::new_spanned(
                            other,
                            "max_retries takes a whole number, or None for no limit",
                        ));
                    }
                };
                opts.policy.push(quote!(.max_retries(#v)));
            }
            Meta::NameValue(nv) if nv.path.is_ident("default_retry_delay") => {
                let v = number(&nv.value, "default_retry_delay")?;
                opts.policy.push(quote!(.default_retry_delay(#v)));
            }
            Meta::NameValue(nv) if nv.path.is_ident("retry_backoff") => {
                let v = match &nv.value {
                    Expr::Lit(ExprLit {
                        lit: Lit::Bool(b), ..
                    }) => {
                        if b.value {
                            1.0
                        } else {
                            continue;
                        }
                    }
                    other => number(other, "retry_backoff")?,
                };
                opts.policy.push(quote!(.retry_backoff(#v)));
            }
            Meta::NameValue(nv) if nv.path.is_ident("retry_backoff_max") => {
                let v = number(&nv.value, "retry_backoff_max")?;
                opts.policy.push(quote!(.retry_backoff_max(#v)));
            }
            Meta::NameValue(nv) if nv.path.is_ident("acks_late") => {
                let v = boolean(&nv.value, "acks_late")?;
                opts.policy.push(quote!(.acks_late(#v)));
            }
            Meta::NameValue(nv) if nv.path.is_ident("reject_on_worker_lost") => {
                let v = boolean(&nv.value, "reject_on_worker_lost")?;
                opts.policy.push(quote!(.reject_on_worker_lost(#v)));
            }
            Meta::NameValue(nv) if nv.path.is_ident("retry_jitter") => {
                let v = boolean(&nv.value, "retry_jitter")?;
                opts.policy.push(quote!(.retry_jitter(#v)));
            }
            Meta::NameValue(nv) if nv.path.is_ident("rate_limit") => {
                let Expr::Lit(ExprLit {
                    lit: Lit::Str(lit), ..
                }) = &nv.value
                else {
                    return Err(syn::Error::new_spanned(
                        &nv.value,
                        "rate_limit takes a string like \"10/s\"",
                    ));
                };
                let text = lit.value();
                let (n, rest) = text.split_once('/').unwrap_or((text.as_str(), "s"));
                let n: f64 = n.trim().parse().map_err(|_| {
                    syn::Error::new_spanned(lit, "rate_limit: expected N/s, N/m or N/h")
                })?;
                let (unit, global) = match rest.trim() {
                    "s" => (1.0, true),
                    "m" => (60.0, true),
                    "h" => (3600.0, true),
                    "s/w" => (1.0, false),
                    "m/w" => (60.0, false),
                    "h/w" => (3600.0, false),
                    _ => {
                        return Err(syn::Error::new_spanned(
                            lit,
                            "rate_limit: expected N/s, N/m or N/h, optionally followed by /w",
                        ));
                    }
                };
                if n <= 0.0 {
                    return Err(syn::Error::new_spanned(lit, "rate_limit must be positive"));
                }
                let per_second = n / unit;
                let make = if global {
                    quote!(per_second_global)
                } else {
                    quote!(per_second_per_worker)
                };
                opts.policy
                    .push(quote!(.rate_limit(::celeriac::RateLimit::#make(#per_second))));
            }
            Meta::NameValue(nv) if nv.path.is_ident("pool") => {
                let Expr::Lit(ExprLit {
                    lit: Lit::Str(lit), ..
                }) = &nv.value
                else {
                    return Err(syn::Error::new_spanned(
                        &nv.value,
                        "pool takes \"threads\", \"processes\" or \"async\"",
                    ));
                };
                let variant = match lit.value().as_str() {
                    "threads" => quote!(Threads),
                    "processes" | "prefork" => quote!(Processes),
                    "async" => quote!(Async),
                    _ => {
                        return Err(syn::Error::new_spanned(
                            lit,
                            "pool takes \"threads\", \"processes\" or \"async\"",
                        ));
                    }
                };
                opts.pool = Some((variant.to_string(), lit.span()));
                opts.policy
                    .push(quote!(.pool(::celeriac::PoolKind::#variant)));
            }
            Meta::List(list) if list.path.is_ident("autoretry_for") => {
                let names =
                    list.parse_args_with(Punctuated::<syn::LitStr, Token![,]>::parse_terminated)?;
                let names: Vec<String> = names.iter().map(syn::LitStr::value).collect();
                opts.policy.push(quote!(.autoretry_for(&[#(#names),*])));
            }
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "unknown task option; expected name, diagnostic, pool, max_retries, default_retry_delay, \
                     retry_backoff, retry_backoff_max, retry_jitter, rate_limit, acks_late, reject_on_worker_lost, track_started, cheap or autoretry_for(\"ExcType\", ...)",
                ));
            }
        }
    }
    Ok(opts)
}

/// Whether the type is spelled `Option<...>` (any path ending in it).
fn is_option(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Option"))
}

fn is_context(ty: &Type) -> bool {
    if let Type::Reference(r) = ty
        && let Type::Path(p) = &*r.elem
    {
        return p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "TaskContext");
    }
    false
}

/// For `Result<T, E>` (any path ending in `Result` with generic args),
/// returns `T`.
fn result_ok_type(ty: &Type) -> Option<Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    })
}

fn expand(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let opts = parse_options(attr)?;
    let func: ItemFn = syn::parse2(item)?;
    let sig = &func.sig;
    let is_async = sig.asyncness.is_some();
    match (&opts.pool, is_async) {
        (Some((p, span)), true) if p != "Async" => {
            return Err(syn::Error::new(
                *span,
                "an async fn task runs on the async pool; pool = \"threads\" or \"processes\" needs a blocking fn",
            ));
        }
        (Some((p, span)), false) if p == "Async" => {
            return Err(syn::Error::new(
                *span,
                "pool = \"async\" needs an async fn: a blocking task never runs on the async executor",
            ));
        }
        _ => {}
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a task function cannot be generic: its parameters must have concrete types",
        ));
    }
    let fn_name = &sig.ident;
    let vis = &func.vis;

    let mut call_args = Vec::new(); // expressions passed to the function
    let mut bindings = Vec::new(); // let x: T = b.take(i)?;
    let mut param_names = Vec::new();
    let mut handle_params = Vec::new(); // x: T for call()
    let mut handle_idents = Vec::new();
    let mut arg_types = Vec::new();
    let mut index = 0usize;
    let mut takes_context = false;
    for (pos, input) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(pt) = input else {
            return Err(syn::Error::new_spanned(input, "a task cannot take `self`"));
        };
        let ty = &*pt.ty;
        if is_context(ty) {
            if pos != 0 {
                return Err(syn::Error::new_spanned(
                    ty,
                    "the &TaskContext parameter must come first",
                ));
            }
            call_args.push(quote!(__ctx));
            takes_context = true;
            continue;
        }
        if let Type::Reference(_) = ty {
            return Err(syn::Error::new_spanned(
                ty,
                "task parameters must be owned types that deserialize from JSON (use String, not &str)",
            ));
        }
        let name = match &*pt.pat {
            Pat::Ident(pi) => pi.ident.to_string(),
            _ => format!("arg{index}"),
        };
        let name = name.trim_start_matches("r#").to_string();
        let var = format_ident!("__arg{}", index);
        // Only an `Option` parameter may be omitted: a `serde_json::Value`
        // parameter would otherwise accept a missing argument as `null`.
        let take = if is_option(ty) {
            quote!(take)
        } else {
            quote!(take_required)
        };
        bindings.push(quote! { let #var: #ty = __bound.#take(#index)?; });
        call_args.push(quote!(#var));
        handle_params.push(quote!(#var: #ty));
        handle_idents.push(quote!(#var));
        arg_types.push(quote!(#ty));
        param_names.push(name);
        index += 1;
    }

    let (output_ty, convert) = match &sig.output {
        ReturnType::Default => (
            quote!(()),
            quote! { ::celeriac::__private::to_json(&__out) },
        ),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => (
                quote!(#ok),
                quote! {
                    match __out {
                        ::core::result::Result::Ok(v) => ::celeriac::__private::to_json(&v),
                        ::core::result::Result::Err(e) => ::core::result::Result::Err(::celeriac::TaskError::from_error(e)),
                    }
                },
            ),
            None => (
                quote!(#ty),
                quote! { ::celeriac::__private::to_json(&__out) },
            ),
        },
    };

    let name_fn = match &opts.name {
        Some(n) => quote! { #n },
        None => {
            let raw = fn_name.to_string();
            let raw = raw.trim_start_matches("r#");
            quote! {
                static __NAME: ::std::sync::OnceLock<::std::string::String> = ::std::sync::OnceLock::new();
                __NAME.get_or_init(|| ::celeriac::__private::default_task_name(
                    ::core::concat!(::core::module_path!(), "::", #raw)
                )).as_str()
            }
        }
    };
    let diagnostic = opts.diagnostic;
    let policy = &opts.policy;
    let doc = format!(
        "The `{fn_name}` task: `{fn_name}::call(..)` builds a typed call, and `{fn_name}` implements `celeriac::Task` (for templates and explicit registration)."
    );
    let call_doc = format!("A typed call of the `{fn_name}` task with these arguments.");
    // `task::s(rest..)`: a canvas step whose first argument is the previous
    // step's result, typed by that first parameter.
    let partial = if arg_types.is_empty() {
        quote! {}
    } else {
        let first_ty = &arg_types[0];
        let rest_params = &handle_params[1..];
        let rest_idents = &handle_idents[1..];
        let s_doc = format!(
            "A canvas step of the `{fn_name}` task: every argument but the first, which is the previous step's result (Celery's `{fn_name}.s(..)`)."
        );
        quote! {
            #[doc = #s_doc]
            #[allow(clippy::too_many_arguments, dead_code)]
            #vis fn s(#(#rest_params),*) -> ::celeriac::canvas::Sig<#first_ty, #output_ty> {
                ::celeriac::Call::<#output_ty>::new(<Self as ::celeriac::Task>::name())
                    .with_args((#(#rest_idents,)*))
                    .partial()
            }
        }
    };
    let args_tuple = quote! { (#(#arg_types,)*) };

    let run_body = if is_async {
        quote! {
            let _ = (__ctx, __args);
            ::core::result::Result::Err(::celeriac::TaskError::typed(
                "NotImplementedError",
                "builtins",
                ::std::format!("{} is an async task: it runs on the async pool", <Self as ::celeriac::Task>::name()),
            ))
        }
    } else {
        quote! {
            let _ = __ctx;
            #[allow(unused_mut)]
            let mut __bound = __args.bind_static(<Self as ::celeriac::Task>::name(), Self::PARAMS)?;
            #(#bindings)*
            let __out = #fn_name(#(#call_args),*);
            #convert
        }
    };
    let async_items = if is_async {
        quote! {
            const IS_ASYNC: bool = true;

            fn run_async(
                __owned_ctx: ::celeriac::TaskContext,
                __args: ::celeriac::Args,
            ) -> ::celeriac::TaskFuture {
                ::std::boxed::Box::pin(async move {
                    let __ctx = &__owned_ctx;
                    let _ = __ctx;
                    #[allow(unused_mut)]
                    let mut __bound = __args.bind_static(<Self as ::celeriac::Task>::name(), Self::PARAMS)?;
                    #(#bindings)*
                    let __out = #fn_name(#(#call_args),*).await;
                    #convert
                })
            }
        }
    } else {
        quote! {}
    };
    let run_async_def = if is_async {
        quote!(::core::option::Option::Some(<#fn_name as ::celeriac::Task>::run_async))
    } else {
        quote!(::core::option::Option::None)
    };

    // A braced struct lives in the type namespace only, so it can share the
    // function's name: `add(2, 3)` calls the function, `add::call(2, 3)`
    // builds a call, and `add` is the task type. Nothing refers to a parent
    // module, so tasks work in any scope, function bodies included.
    Ok(quote! {
        #func

        #[doc = #doc]
        #[allow(non_camel_case_types, missing_docs)]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #fn_name {}

        impl ::celeriac::Task for #fn_name {
            type Args = #args_tuple;
            type Output = #output_ty;
            const PARAMS: &'static [&'static str] = &[#(#param_names),*];
            const TAKES_CONTEXT: bool = #takes_context;
            const OPTIONS: ::celeriac::TaskOptions = ::celeriac::TaskOptions::new() #(#policy)*;

            fn name() -> &'static str {
                #name_fn
            }

            fn run(
                __ctx: &::celeriac::TaskContext,
                __args: ::celeriac::Args,
            ) -> ::core::result::Result<::celeriac::__private::serde_json::Value, ::celeriac::TaskError> {
                #run_body
            }

            #async_items
        }

        impl #fn_name {
            #[doc = #call_doc]
            #[allow(clippy::too_many_arguments, dead_code)]
            #vis fn call(#(#handle_params),*) -> ::celeriac::Call<#output_ty> {
                <Self as ::celeriac::Task>::call((#(#handle_idents,)*))
            }

            #partial
        }

        ::celeriac::__private::inventory::submit! {
            ::celeriac::TaskDef {
                name: <#fn_name as ::celeriac::Task>::name,
                run: <#fn_name as ::celeriac::Task>::run,
                run_async: #run_async_def,
                diagnostic: #diagnostic,
                options: <#fn_name as ::celeriac::Task>::OPTIONS,
                params: <#fn_name as ::celeriac::Task>::PARAMS,
                takes_context: <#fn_name as ::celeriac::Task>::TAKES_CONTEXT,
            }
        }
    })
}
