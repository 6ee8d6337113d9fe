// An external system reading its mes-events consumer, in C# (.NET NATS client).
//
// Connects as the system (its NKey seed from `mes-events provision credentials`, and its own
// inbox prefix, which its permissions require), binds to its durable consumer by name (the
// system's account holds only that consumer's pulls and acks, not the JetStream API, so the
// consumer is not looked up), pulls from it, reads each
// CloudEvent (binary mode: percent-encoded ce-* headers, body = JSON data), handles it and acks
// it. The consumer is durable: stop the service at any point and it resumes after the last ack.
//
//   dotnet run -- nats://mes-nats:4222 quality quality.nk
//
// Not run by the test suite (no .NET on the CI machines); the Python and JavaScript examples,
// which do the same, are.
using System.Text.Json;
using NATS.Client.Core;
using NATS.Client.JetStream;
using NATS.Client.JetStream.Models;
using NATS.Net;

var url = args.ElementAtOrDefault(0) ?? "nats://127.0.0.1:4222";
var system = args.ElementAtOrDefault(1) ?? "quality";
var seedFile = args.ElementAtOrDefault(2) ?? $"{system}.nk";

await using var nats = new NatsClient(new NatsOpts
{
    Url = url,
    AuthOpts = new NatsAuthOpts { Seed = (await File.ReadAllTextAsync(seedFile)).Trim() },
    InboxPrefix = $"_INBOX_{system}",
});
var js = nats.CreateJetStreamContext();
var consumer = new NatsJSConsumer((NatsJSContext)js, new ConsumerInfo
{
    StreamName = "MES_EVENTS",
    Name = system,
    Config = new ConsumerConfig(system),
});

using var stop = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Cancel(); };

await foreach (var msg in consumer.ConsumeAsync<byte[]>(cancellationToken: stop.Token))
{
    var attrs = new Dictionary<string, string>();
    foreach (var (name, values) in msg.Headers ?? new NatsHeaders())
    {
        if (name.StartsWith("ce-", StringComparison.OrdinalIgnoreCase))
            attrs[name[3..].ToLowerInvariant()] = Uri.UnescapeDataString(values.ToString());
    }
    try
    {
        using var data = JsonDocument.Parse(msg.Data ?? Array.Empty<byte>());
        Handle(attrs, data.RootElement);
        await msg.AckAsync(new AckOpts { DoubleAck = true }, stop.Token);
    }
    catch (Exception ex) when (ex is not OperationCanceledException)
    {
        await msg.NakAsync(delay: TimeSpan.FromSeconds(5), cancellationToken: stop.Token);
    }
}

// Your integration goes here. Throw to have the event redelivered later.
static void Handle(IReadOnlyDictionary<string, string> ce, JsonElement data) =>
    Console.WriteLine($"{ce["time"]} {ce["type"]} {ce["subject"]} seq={ce["sequence"]}");
