%% Distributed Erlang baseline for peerlink's benchmarks (bench/erlang.py drives it).
%%
%% Two nodes on 127.0.0.1 (long names), each pinned to its own core by the driver.
%% Node b runs serve/0 (a sink process and an echo process); node a runs one of
%% tput/1, lat/1, then prints a single JSON line and halts.
%%
%%   tput([BNode, N, Size]): one process sends N messages {t, <<Size bytes>>} to the
%%       sink on b; the sink replies once it has received all N. msgs/s = N / elapsed
%%       (elapsed on a's clock: first send to the sink's reply).
%%   lat([BNode, N, Size, InFlight]): InFlight processes each do N div InFlight calls
%%       {Pid, Ref, Bin} -> echo -> {Ref, Bin}; per-call round trip in microseconds.
-module(peerbench).
-export([serve/0, tput/1, lat/1]).

serve() ->
    register(sink, spawn(fun sink/0)),
    register(echo, spawn(fun echo/0)),
    ok.

sink() ->
    receive
        {start, From, N} -> sink(From, N)
    end.

sink(From, 0) ->
    From ! done,
    sink();
sink(From, N) ->
    receive
        {t, _Bin} -> sink(From, N - 1)
    end.

echo() ->
    receive
        {From, Ref, Bin} -> From ! {Ref, Bin}, echo()
    end.

remote_pid(BNode, Name) ->
    true = net_kernel:connect_node(BNode),
    wait_registered(BNode, Name, 200).

wait_registered(_BNode, Name, 0) -> erlang:error({not_registered, Name});
wait_registered(BNode, Name, Tries) ->
    case rpc:call(BNode, erlang, whereis, [Name]) of
        Pid when is_pid(Pid) -> Pid;
        _ -> timer:sleep(10), wait_registered(BNode, Name, Tries - 1)
    end.

node_arg(A) when is_atom(A) -> A;
node_arg(L) when is_list(L) -> list_to_atom(L).

arg(A) when is_atom(A) -> list_to_integer(atom_to_list(A));
arg(L) when is_list(L) -> list_to_integer(L).

tput([BNodeA, NA, SizeA]) ->
    BNode = node_arg(BNodeA), N = arg(NA), Size = arg(SizeA),
    Sink = remote_pid(BNode, sink),
    Bin = binary:copy(<<"x">>, Size),
    %% warm-up: the atom cache and the connection
    Sink ! {start, self(), 1000},
    send_n(Sink, Bin, 1000),
    receive done -> ok end,
    T0 = erlang:monotonic_time(nanosecond),
    Sink ! {start, self(), N},
    send_n(Sink, Bin, N),
    receive done -> ok end,
    T1 = erlang:monotonic_time(nanosecond),
    Secs = (T1 - T0) / 1.0e9,
    io:format("{\"n\": ~b, \"seconds\": ~f, \"msgs_per_s\": ~f}~n", [N, Secs, N / Secs]),
    halt(0).

send_n(_Sink, _Bin, 0) -> ok;
send_n(Sink, Bin, N) -> Sink ! {t, Bin}, send_n(Sink, Bin, N - 1).

lat([BNodeA, NA, SizeA, KA]) ->
    BNode = node_arg(BNodeA), N = arg(NA), Size = arg(SizeA), K = arg(KA),
    Echo = remote_pid(BNode, echo),
    Bin = binary:copy(<<"x">>, Size),
    Self = self(),
    run_clients(Self, Echo, Bin, K, 1000 div K + 1),  % warm-up
    T0 = erlang:monotonic_time(nanosecond),
    Lat = lists:sort(run_clients(Self, Echo, Bin, K, N div K)),
    T1 = erlang:monotonic_time(nanosecond),
    M = length(Lat),
    Us = list_to_tuple([X / 1000 || X <- Lat]),
    P = fun(Q) -> element(min(M, trunc(M * Q) + 1), Us) end,
    Cdf = [P(Q / 100) || Q <- lists:seq(0, 100)],
    io:format("{\"n\": ~b, \"p50\": ~f, \"p90\": ~f, \"p99\": ~f, \"max\": ~f, \"mean\": ~f, "
              "\"calls_per_s\": ~f, \"cdf\": [~s]}~n",
              [M, P(0.5), P(0.9), P(0.99), element(M, Us), lists:sum(Lat) / M / 1000,
               M / ((T1 - T0) / 1.0e9),
               lists:join(", ", [io_lib:format("~f", [C]) || C <- Cdf])]),
    halt(0).

run_clients(Parent, Echo, Bin, K, Count) ->
    Pids = [spawn_link(fun() -> Parent ! {lat, self(), client(Echo, Bin, Count, [])} end)
            || _ <- lists:seq(1, K)],
    lists:append([receive {lat, P, L} -> L end || P <- Pids]).

client(_Echo, _Bin, 0, Acc) -> Acc;
client(Echo, Bin, Count, Acc) ->
    Ref = make_ref(),
    T = erlang:monotonic_time(nanosecond),
    Echo ! {self(), Ref, Bin},
    receive {Ref, _} -> ok end,
    client(Echo, Bin, Count - 1, [erlang:monotonic_time(nanosecond) - T | Acc]).
